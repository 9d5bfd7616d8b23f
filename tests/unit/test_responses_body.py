"""OpenAI Responses ↔ Chat Completions, table by table (modelyard.responses_body and
modelyard.responses_stream), checked against the openai SDK's own types and client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from modelyard.openai_body import body_features, features
from modelyard.responses_answer import response
from modelyard.responses_body import declined_tools, read, to_chat
from modelyard.responses_stream import ResponsesAnswer

EVENT = TypeAdapter(ResponseStreamEvent)
Q = {"type": "object", "properties": {"q": {"type": "string"}}}
LOOK = {"type": "function", "name": "look", "description": "Look it up", "parameters": Q,
        "strict": True}  # fmt: skip
LOOK_CHAT = {"type": "function", "function": {
    "name": "look", "description": "Look it up", "parameters": Q, "strict": True}}  # fmt: skip
BUILT_INS = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}},
             {"type": "web_search_preview"}, {"type": "custom", "name": "apply_patch"},
             {"type": "web_search"}]  # fmt: skip
HI = {"model": "qwen", "input": "hi"}


def chat(**body: Any) -> dict[str, Any]:
    out = to_chat({**HI, **body})
    assert isinstance(out, dict), out
    return out


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call(call_id: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "look", "arguments": arguments}}


# -- the request ------------------------------------------------------------------------------


def test_a_string_input_settings_and_what_passes() -> None:
    out = chat(
        instructions="Be brief.", max_output_tokens=64, temperature=0.2, top_p=0.9,
        reasoning={"effort": "low", "summary": "auto"}, parallel_tool_calls=False,
        top_k=40,  # an engine's own: passes
        store=False, metadata={"a": "b"}, include=["reasoning.encrypted_content"],
        truncation="auto", user="u", service_tier="auto", background=False,
        prompt_cache_key="k", safety_identifier="s", previous_response_id="resp_1",
        stream_options={"include_obfuscation": False}, max_tool_calls=3, top_logprobs=2,
    )  # fmt: skip
    assert out == {
        "model": "qwen",
        "messages": [{"role": "system", "content": "Be brief."}, user("hi")],
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "reasoning_effort": "low",
        "parallel_tool_calls": False, "top_k": 40,
    }  # fmt: skip


def test_streaming_asks_for_usage() -> None:
    out = chat(stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "stream" not in chat(stream=False)


def test_items_become_messages_and_calls_merge_into_one_turn() -> None:
    out = chat(
        input=[
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is "},
                {"type": "input_text", "text": "this?"},
            ]},
            {"role": "user", "content": [
                {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                {"type": "input_text", "text": "And this?"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "zz"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Let me look.", "annotations": []},
            ]},
            {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": '{"q":1}'},
            {"type": "function_call", "call_id": "call_2", "name": "look", "arguments": ""},
            {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
            {"type": "function_call_output", "call_id": "call_2", "output": [
                {"type": "input_text", "text": "a dog"},
                {"type": "input_image", "image_url": "https://x/dog.png"},
                {"type": "input_text", "text": "brown"},
            ]},
            {"type": "function_call", "call_id": "call_3", "name": "look", "arguments": {"q": 2}},
            {"type": "function_call_output", "call_id": "call_3", "output": ""},
            {"role": "assistant", "content": "Done."},
        ],
    )  # fmt: skip
    assert out["messages"] == [
        {"role": "system", "content": "Use tools."},  # developer: what chat templates know
        user("What is this?"),
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            {"type": "text", "text": "And this?"},
        ]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            call("call_1", '{"q":1}'), call("call_2", "{}"),
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        {"role": "tool", "tool_call_id": "call_2", "content": "a dog\nbrown"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("call_3", '{"q":2}'),
        ]},
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
        {"role": "assistant", "content": "Done."},
    ]  # fmt: skip


def test_function_tools_pass_and_built_in_tools_are_declined() -> None:
    body = {**HI, "tools": [BUILT_INS[0], LOOK, *BUILT_INS[1:]], "tool_choice": "required"}
    out = to_chat(body)
    assert isinstance(out, dict), out
    assert out["tools"] == [LOOK_CHAT] and out["tool_choice"] == "required"
    assert declined_tools(body) == [
        "web_search",
        "code_interpreter",
        "web_search_preview",
        "custom",
    ]
    only_built_ins = {**HI, "tools": BUILT_INS, "tool_choice": "required"}
    out = to_chat(only_built_ins)
    assert isinstance(out, dict), out
    assert "tools" not in out and "tool_choice" not in out  # an engine refuses a choice of none
    assert declined_tools(HI) == [] and declined_tools({**HI, "tools": [LOOK]}) == []


def test_a_function_tool_without_parameters_gets_an_empty_object() -> None:
    out = chat(tools=[{"type": "function", "name": "now"}])
    empty = {"type": "object", "properties": {}}
    assert out["tools"] == [{"type": "function", "function": {"name": "now", "parameters": empty}}]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "look"}, {"type": "function", "function": {"name": "look"}}),
        ({"type": "web_search_preview"}, None),  # the built-in tool's choice goes with it
    ],
)
def test_tool_choice(choice: Any, sent: Any) -> None:
    assert chat(tools=[LOOK, *BUILT_INS], tool_choice=choice).get("tool_choice") == sent


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ({"format": {"type": "json_schema", "name": "cat", "schema": {"type": "object"},
                     "strict": True}},
         {"type": "json_schema", "json_schema": {"name": "cat", "schema": {"type": "object"},
                                                 "strict": True}}),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        ({"format": {"type": "text"}, "verbosity": "low"}, None),
        ({}, None),
    ],
)  # fmt: skip
def test_text_format_becomes_response_format(text: Any, sent: Any) -> None:
    assert chat(text=text).get("response_format") == sent


def bad_part(part: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {**HI, "input": [{"role": role, "content": [part]}]}


TURNS = [
    {"role": "developer", "content": "Use tools."},
    {"role": "user", "content": [{"type": "input_text", "text": "What is "},
                                 {"type": "input_image", "image_url": "https://x/cat.png"},
                                 {"type": "input_text", "text": "this?"}]},
    {"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": "Let me look."}, {"type": "refusal", "refusal": "No."}]},
    {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
    {"type": "function_call", "call_id": "c2", "name": "look", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
    {"type": "function_call_output", "call_id": "c2", "output": [
        {"type": "input_text", "text": "a dog"}, {"type": "input_text", "text": "brown"}]},
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {"type": "function_call", "call_id": "c3", "name": "look", "arguments": "{}"},
    {"role": "user", "content": []},
    {"role": "assistant", "content": "Done."},
]  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"instructions": "Be brief.", "max_output_tokens": 9},
        {"instructions": "", "input": [{"role": "user", "content": "hi"}]},
        {"input": TURNS, "tools": [LOOK, *BUILT_INS]},
        {"input": TURNS[3:], "tools": BUILT_INS},
        {"input": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]},
    ],
)
def test_what_routing_reads_is_what_it_reads_of_the_translation(body: dict[str, Any]) -> None:
    # Read off the body as it came (a request passed through is never translated) or off its
    # translation: the same features, so a request routes the same either way.
    read_off = read({**HI, **body})
    assert not isinstance(read_off, tuple), read_off
    assert read_off == body_features(chat(**body))
    assert features({**HI, **body}, {}, text=read_off) == features(chat(**body), {})


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"model": "m"}, "input", "required"),
        ({**HI, "input": []}, "input", "required"),
        ({**HI, "input": ""}, "input", "required"),
        ({**HI, "input": ["hi"]}, "input.0", "must be an object"),
        ({**HI, "input": [{"role": "tool", "content": "x"}]}, "input.0.role", "one of"),
        ({**HI, "input": [{"role": "user", "content": 5}]}, "input.0.content", "string or a list"),
        (bad_part({"type": "input_file", "file_id": "f"}), "input.0.content.0.type",
         "'input_file' part is not supported in a user message"),
        (bad_part({"type": "input_image", "file_id": "file_1"}), "input.0.content.0.file_id",
         "files are not kept here"),
        (bad_part({"type": "input_image"}), "input.0.content.0.image_url", "needs `image_url`"),
        (bad_part({"type": "input_image", "image_url": "https://x"}, "assistant"),
         "input.0.content.0.type", "not supported in a assistant message"),
        (bad_part({"type": "input_text"}), "input.0.content.0.type", "not supported"),
        ({**HI, "input": [{"type": "function_call_output", "output": "x"}]},
         "input.0.call_id", "needs the `call_id`"),
        ({**HI, "input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
         "input.0.output", "string or a list"),
        ({**HI, "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
         "input.0.name", "needs `name`"),
        ({**HI, "input": [{"type": "function_call", "name": "n", "arguments": "{}"}]},
         "input.0.call_id", "needs `call_id`"),
        ({**HI, "input": [{"type": "function_call", "call_id": "c", "name": "n", "arguments": 5}]},
         "input.0.arguments", "JSON string"),
        ({**HI, "input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type",
         "'item_reference' is not supported"),
        ({**HI, "instructions": ["x"]}, "instructions", "string"),
        ({**HI, "max_output_tokens": 0}, "max_output_tokens", "at least 1"),
        ({**HI, "tools": {"type": "function"}}, "tools", "must be a list"),
        ({**HI, "tools": [LOOK, {"name": "x"}]}, "tools.1.type", "needs a `type`"),
        ({**HI, "tools": [{"type": "function"}]}, "tools.0.name", "needs a `name`"),
        ({**HI, "tool_choice": "maybe"}, "tool_choice", "auto, none, required"),
        ({**HI, "tool_choice": {"type": "function"}}, "tool_choice.name", "needs `name`"),
        ({**HI, "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
         "tool_choice", "allowed_tools"),
        ({**HI, "text": "json"}, "text", "must be an object"),
        ({**HI, "text": {"format": {"type": "xml"}}}, "text.format", "json_object"),
        ({**HI, "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format",
         "needs `name` and `schema`"),
        ({**HI, "reasoning": "high"}, "reasoning", "must be an object"),
        ({**HI, "input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input",
         "nothing to send"),
        ({**HI, "conversation": "conv_1"}, "conversation", "kept by the server"),
        ({**HI, "prompt": {"id": "pmpt_1"}}, "prompt", "kept by the server"),
    ],
)  # fmt: skip
def test_what_is_wrong_is_named(body: dict[str, Any], field: str, says: str) -> None:
    problem = to_chat(body)
    assert isinstance(problem, tuple), problem
    assert problem[1] == field and says in problem[0], problem


# -- the whole answer -------------------------------------------------------------------------

ASKED = {
    "model": "qwen", "input": "hi", "instructions": "Be brief.", "temperature": 0.3,
    "tools": [LOOK, *BUILT_INS[:2]], "tool_choice": {"type": "function", "name": "look"},
    "text": {"format": {"type": "json_schema", "name": "cat", "schema": {"type": "object"}}},
    "metadata": {"k": "v"}, "parallel_tool_calls": False,
}  # fmt: skip
ANSWER = {
    "created": 1700000000,
    "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Looking.", "reasoning_content": "The user wants...",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "look", "arguments": '{"q": "cat"}'}}]}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
              "prompt_tokens_details": {"cached_tokens": 4},
              "completion_tokens_details": {"reasoning_tokens": 3}},
}  # fmt: skip


def test_an_answer_becomes_a_response_the_sdk_reads() -> None:
    out = response(ANSWER, "qwen", ASKED)
    assert out["id"].startswith("resp_") and out["object"] == "response"
    assert (out["status"], out["model"], out["created_at"]) == ("completed", "qwen", 1700000000)
    reasoning, said, call = out["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "The user wants..."}]
    assert said["id"].startswith("msg_") and call["id"].startswith("fc_")
    assert {k: v for k, v in said.items() if k != "id"} == {
        "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "Looking.", "annotations": [], "logprobs": []}],
    }  # fmt: skip
    assert {k: v for k, v in call.items() if k != "id"} == {
        "type": "function_call", "call_id": "call_1", "name": "look",
        "arguments": '{"q": "cat"}', "status": "completed",
    }  # fmt: skip
    assert out["usage"] == {
        "input_tokens": 12, "output_tokens": 7, "total_tokens": 19,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 3},
    }  # fmt: skip
    parsed = Response.model_validate(out)  # the SDK's own model takes it
    assert parsed.output_text == "Looking." and parsed.status == "completed"
    assert parsed.instructions == "Be brief." and parsed.temperature == 0.3
    assert [t.type for t in parsed.tools] == ["function", "web_search", "code_interpreter"]
    assert parsed.parallel_tool_calls is False and parsed.metadata == {"k": "v"}
    assert parsed.text is not None and parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"
    assert not isinstance(parsed.tool_choice, str) and parsed.tool_choice.type == "function"


@pytest.mark.parametrize(
    ("finish", "status", "details"),
    [("stop", "completed", None), ("length", "incomplete", {"reason": "max_output_tokens"}),
     ("content_filter", "incomplete", {"reason": "content_filter"}), (None, "completed", None)],
)  # fmt: skip
def test_how_an_answer_ended(finish: str | None, status: str, details: Any) -> None:
    # vLLM's newer name for the reasoning, and no usage and no request: still the SDK's shape
    said = {"content": "ab", "reasoning": "hm"}
    out = response({"choices": [{"finish_reason": finish, "message": said}]}, "m")
    assert (out["status"], out["incomplete_details"]) == (status, details)
    assert out["usage"]["input_tokens"] == 0 and out["output"][0]["summary"][0]["text"] == "hm"
    parsed = Response.model_validate(out)
    assert parsed.output_text == "ab" and parsed.tool_choice == "auto" and parsed.tools == []


# -- the stream -------------------------------------------------------------------------------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


def ended(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


STREAM = sse(
    delta(role="assistant", content=""),
    delta(reasoning_content="Think"),
    delta(reasoning_content="ing."),
    delta(content="Hello"),
    delta(content=" there."),
    delta(tool_calls=[{"index": 0, "id": "call_9", "function": {"name": "look"}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '{"q": '}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '"cat"}'}}]),
    delta(tool_calls=[{"index": 1, "id": "call_10", "function": {"name": "look",
                                                                  "arguments": "{}"}}]),
    ended("tool_calls"),
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}},
)  # fmt: skip


def events(out: bytes) -> list[dict[str, Any]]:
    """The events in ``out``, each checked: SSE framing, the SDK's union, numbering."""
    found = []
    for block in out.decode().strip().split("\n\n"):
        kind, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert kind == "event: " + event["type"]
        EVENT.validate_python(event)  # the SDK's own event types take it
        found.append(event)
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    return found


def run(stream: bytes, size: int, asked: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    translator = ResponsesAnswer("qwen", asked)
    out = b"".join(translator.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    return events(out + translator.end())


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_stream_becomes_the_event_sequence_in_any_chunking(size: int) -> None:
    found = run(STREAM, size, ASKED)
    assert [e["type"] for e in found] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    created = found[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["model"] == "qwen" and created["instructions"] == "Be brief."
    added = [e for e in found if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2, 3]
    assert [e["item"]["status"] for e in added] == ["in_progress"] * 4
    assert added[2]["item"]["call_id"] == "call_9" and added[2]["item"]["arguments"] == ""
    text = [e for e in found if e["type"] == "response.output_text.delta"]
    assert [(e["delta"], e["item_id"], e["output_index"], e["content_index"]) for e in text] == [
        ("Hello", added[1]["item"]["id"], 1, 0),
        (" there.", added[1]["item"]["id"], 1, 0),
    ]
    assert found[13]["text"] == "Hello there." and found[6]["text"] == "Thinking."
    assert found[19]["arguments"] == '{"q": "cat"}'
    last = found[-1]["response"]
    assert last["id"] == created["id"] and last["status"] == "completed"
    assert [item["id"] for item in last["output"]] == [e["item"]["id"] for e in added]
    assert [item["type"] for item in last["output"]] == [
        "reasoning", "message", "function_call", "function_call"
    ]  # fmt: skip
    assert last["usage"]["input_tokens"] == 9 and last["usage"]["total_tokens"] == 14
    parsed = Response.model_validate(last)
    assert parsed.output_text == "Hello there."


def test_a_stream_cut_by_length_is_incomplete_and_end_completes_without_done() -> None:
    translator = ResponsesAnswer("m")
    out = translator.feed(sse(delta(content="ab"), ended("length"))[: -len("data: [DONE]\n\n")])
    found = events(out + translator.end() + translator.end())  # a second end: nothing more
    assert found[-1]["type"] == "response.incomplete"
    assert found[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert found[-2]["type"] == "response.output_item.done"


def test_an_empty_stream_still_starts_and_completes() -> None:
    translator = ResponsesAnswer("m")
    found = events(translator.feed(b"data: [DONE]\n\n") + translator.end())
    assert [e["type"] for e in found] == [
        "response.created", "response.in_progress", "response.completed"
    ]  # fmt: skip
    assert found[-1]["response"]["output"] == []


def test_an_error_mid_stream_fails_the_response_and_nothing_follows() -> None:
    translator = ResponsesAnswer("m")
    out = translator.feed(sse(delta(content="Hi"))[: -len("data: [DONE]\n\n")])
    gateway = {"error": {"message": "qwen sent nothing for 5s", "type": "upstream_error",
                         "code": "timeout"}}  # fmt: skip
    out += translator.feed(b"data: " + orjson.dumps(gateway) + b"\n\n")
    after = translator.feed(sse(delta(content="more"))) + translator.end()
    assert after == b""
    found = events(out)
    assert [e["type"] for e in found][-2:] == ["response.output_text.delta", "response.failed"]
    failed = found[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "qwen sent nothing for 5s"}
    assert failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "Hi"


def test_an_error_first_still_opens_the_response() -> None:
    translator = ResponsesAnswer("m")
    found = events(translator.feed(b'data: {"error": {"message": "boom"}}\n\n') + translator.end())
    assert [e["type"] for e in found] == [
        "response.created", "response.in_progress", "response.failed"
    ]  # fmt: skip


# -- the SDK's own client, end to end ---------------------------------------------------------


def client(answer: Callable[[dict[str, Any]], httpx.Response]) -> openai.OpenAI:
    """An SDK client whose server translates its request and answers through the module."""

    def serve(request: httpx.Request) -> httpx.Response:
        asked = orjson.loads(request.content)
        sent = to_chat(asked)
        assert isinstance(sent, dict), sent
        return answer(asked)

    transport = httpx.MockTransport(serve)
    return openai.OpenAI(
        api_key="k", base_url="http://gw/v1", http_client=httpx.Client(transport=transport)
    )


def test_the_sdk_streams_the_events_to_a_final_response() -> None:
    def answer(asked: dict[str, Any]) -> httpx.Response:
        sent = to_chat(asked)
        assert isinstance(sent, dict) and sent["stream"] is True
        translator = ResponsesAnswer(asked["model"], asked)
        body = translator.feed(STREAM) + translator.end()
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    tools: Any = [LOOK, {"type": "web_search"}]
    with client(answer).responses.stream(model="qwen", input="hi", tools=tools) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Hello there." and final.usage is not None
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [
        ("call_9", '{"q": "cat"}'),
        ("call_10", "{}"),
    ]


def test_the_sdk_takes_a_failed_stream_as_its_last_event() -> None:
    def answer(asked: dict[str, Any]) -> httpx.Response:
        translator = ResponsesAnswer(asked["model"], asked)
        body = translator.feed(sse(delta(content="Hi"))[: -len("data: [DONE]\n\n")])
        body += translator.feed(b'data: {"error": {"message": "engine died"}}\n\n')
        body += translator.end()
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with client(answer).responses.stream(model="qwen", input="hi") as stream:
        seen = list(stream)
    last = seen[-1]
    assert last.type == "response.failed" and last.response.error is not None
    assert last.response.error.message == "engine died"


def test_the_sdk_reads_a_whole_response_and_the_error_shape() -> None:
    def answer(asked: dict[str, Any]) -> httpx.Response:
        if asked["input"] == "fail":
            body = ResponsesAnswer("qwen").error(502, b"<html>bad gateway</html>")
            return httpx.Response(502, content=body)
        body = ResponsesAnswer(asked["model"], asked).whole(orjson.dumps(ANSWER))
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    sdk = client(answer).with_options(max_retries=0)
    got = sdk.responses.create(model="qwen", input=[{"role": "user", "content": "hi"}])
    assert got.output_text == "Looking." and got.output[2].type == "function_call"
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.responses.create(model="qwen", input="fail")
    assert caught.value.status_code == 502 and "bad gateway" in caught.value.message


def test_errors_keep_openai_s_shape() -> None:
    translation = ResponsesAnswer("m")
    openai_error = {"error": {"message": "bad", "type": "invalid_request_error", "param": "x",
                              "code": None}}  # fmt: skip
    assert orjson.loads(translation.error(400, orjson.dumps(openai_error))) == openai_error
    wrapped = {"error": {"message": "<html>", "type": "server_error", "param": None, "code": None}}
    assert orjson.loads(translation.error(502, b"<html>")) == wrapped
    unwrapped = orjson.loads(translation.error(429, b'{"message": "slow down"}'))
    assert unwrapped["error"]["message"] == "slow down"
    assert unwrapped["error"]["type"] == "rate_limit_error"
    assert translation.whole(b"not json") == b"not json"
