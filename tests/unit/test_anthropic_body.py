"""Anthropic Messages ↔ Chat Completions, table by table (modelyard.anthropic_body)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from modelyard.anthropic_answer import MessagesAnswer, message
from modelyard.anthropic_body import error, read, to_chat
from modelyard.openai_body import body_features, features

BASE = {"model": "claude-3-5-haiku-latest", "max_tokens": 64}
PNG = {"type": "base64", "media_type": "image/png", "data": "AAA"}
A_CAT = {"type": "text", "text": "a cat"}
SEARCH = {"type": "web_search_20250305", "name": "w"}
X = [{"role": "user", "content": "x"}]


def chat(**body: Any) -> dict[str, Any]:
    out = to_chat({**BASE, **body})
    assert isinstance(out, dict), out
    return out


def test_system_text_and_sampling() -> None:
    out = chat(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:"],
    )  # fmt: skip
    assert out["messages"] == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {"role": "user", "content": "hi"},
    ]
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["top_k"]) == (64, 0.2, 0.9, 40)
    assert out["stop"] == ["\n\nHuman:"] and "stream" not in out


def test_images_tools_and_tool_results() -> None:
    out = chat(
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": PNG},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "cat"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [A_CAT]},
                {"type": "text", "text": "And now?"},
            ]},
        ],
        tools=[{"name": "look", "description": "Look it up", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stream=True,
    )  # fmt: skip
    assert out["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
        ]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "look", "arguments": '{"q":"cat"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
        {"role": "user", "content": "And now?"},
    ]  # fmt: skip
    function = {"name": "look", "parameters": {"type": "object"}, "description": "Look it up"}
    assert out["tools"] == [{"type": "function", "function": function}]
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens", "required"),
        ({**BASE, "max_tokens": 0, "messages": []}, "max_tokens", "at least 1"),
        ({**BASE}, "messages", "required"),
        ({**BASE, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role", "user or"),
        ({**BASE, "messages": [{"role": "user", "content": 5}]}, "messages.0.content", "string"),
        ({**BASE, "messages": [{"role": "user", "content": []}]}, "messages", "nothing to send"),
        ({**BASE, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
         "messages.0.content.0.type", "'document' block is not supported"),
        ({**BASE, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
         "messages.0.content.0.source", "base64"),
        ({**BASE, "system": 5, "messages": [{"role": "user", "content": "x"}]}, "system", "string"),
        ({**BASE, "messages": X, "tools": [SEARCH]},
         "tools.0", "server tool 'web_search_20250305'"),
        ({**BASE, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}},
         "tool_choice", "auto|any|none"),
        ({**BASE, "messages": [{"role": "user", "content": "x"}], "stop_sequences": "END"},
         "stop_sequences", "list of strings"),
        ({**BASE, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "max"}},
         "thinking", "enabled"),
    ],
)  # fmt: skip
def test_what_is_wrong_is_named(body: dict[str, Any], field: str, says: str) -> None:
    problem = to_chat(body)
    assert isinstance(problem, tuple), problem
    assert problem[1] == field and says in problem[0], problem


TOOL_TURNS = [
    {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "source": PNG},
                                 {"type": "text", "text": "here"}]},
    {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""},
                                      {"type": "tool_use", "id": "t", "name": "look"}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "a cat",
                                  "is_error": True}]},
    {"role": "assistant", "content": [A_CAT, {"type": "text", "text": "!"}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}, A_CAT]},
]  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        {"messages": X},
        {"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]},
        {"system": [A_CAT, A_CAT], "messages": [{"role": "assistant", "content": "x"}, *X]},
        {"messages": TOOL_TURNS, "tools": [{"name": "look", "input_schema": {}}]},
        {"messages": TOOL_TURNS[1:3], "tools": []},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": PNG}]}]},
    ],
)
def test_what_routing_reads_is_what_it_reads_of_the_translation(body: dict[str, Any]) -> None:
    # Read off the body as it came (a request passed through is never translated) or off its
    # translation: the same features, so a request routes the same either way.
    read_off = read({**BASE, **body})
    assert not isinstance(read_off, tuple), read_off
    assert read_off == body_features(chat(**body))
    assert features({**BASE, **body}, {}, text=read_off) == features(chat(**body), {})


def test_thinking_maps_onto_the_template() -> None:
    on = chat(
        messages=[{"role": "user", "content": "x"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert on["chat_template_kwargs"] == {"enable_thinking": True}


def test_an_answer_becomes_a_message() -> None:
    answer = {
        "choices": [{"finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Looking.", "reasoning_content": "The user wants...",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "look", "arguments": '{"q": "cat"}'}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7},
    }  # fmt: skip
    out = message(answer, "claude-x")
    assert out["type"] == "message" and out["role"] == "assistant" and out["model"] == "claude-x"
    assert out["id"].startswith("msg_")
    assert out["content"] == [
        {"type": "thinking", "thinking": "The user wants...", "signature": ""},
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": "cat"}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 7}
    plain = message({"choices": [{"finish_reason": "length", "message": {"content": "ab"}}]}, "m")
    assert plain["stop_reason"] == "max_tokens" and plain["usage"]["output_tokens"] == 0


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


def events(out: bytes) -> list[dict[str, Any]]:
    found = []
    for block in out.decode().strip().split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: ")
        event = orjson.loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: ")
        found.append(event)
    return found


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_stream_becomes_the_event_sequence_in_any_chunking(size: int) -> None:
    stream = sse(
        delta(role="assistant", content=""),
        delta(reasoning_content="Think."),
        delta(content="Hello"),
        delta(content=" there."),
        delta(tool_calls=[{"index": 0, "id": "call_9", "function": {"name": "look"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"q": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"cat"}'}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}},
    )  # fmt: skip
    translator = MessagesAnswer("claude-x")
    out = b"".join(translator.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    found = events(out + translator.end())
    kinds = [e["type"] for e in found]
    assert kinds == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",  # thinking
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert found[0]["message"]["model"] == "claude-x"
    assert found[1]["content_block"]["type"] == "thinking"
    assert [e["index"] for e in found if e["type"] == "content_block_start"] == [0, 1, 2]
    text = "".join(e["delta"].get("text", "") for e in found if e["type"] == "content_block_delta")
    assert text == "Hello there."
    assert found[8]["content_block"] == {
        "type": "tool_use",
        "id": "call_9",
        "name": "look",
        "input": {},
    }
    deltas = [e["delta"] for e in found if e["type"] == "content_block_delta"]
    partial = "".join(d.get("partial_json", "") for d in deltas)
    assert orjson.loads(partial) == {"q": "cat"}
    assert found[-2]["delta"]["stop_reason"] == "tool_use"
    assert found[-2]["usage"] == {"input_tokens": 9, "output_tokens": 5}


def test_an_error_mid_stream_is_an_error_event_and_nothing_follows() -> None:
    translator = MessagesAnswer("m")
    out = translator.feed(sse(delta(content="Hi"))[:-14])  # without [DONE]
    out += translator.feed(b'data: {"error": {"message": "qwen sent nothing for 5s"}}\n\n')
    found = events(out + translator.end())
    said = {"type": "api_error", "message": "qwen sent nothing for 5s"}
    assert found[-1] == {"type": "error", "error": said}


def test_an_empty_stream_still_starts_and_stops() -> None:
    translator = MessagesAnswer("m")
    found = events(translator.feed(b"data: [DONE]\n\n") + translator.end())
    assert [e["type"] for e in found] == ["message_start", "message_delta", "message_stop"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
     (413, "request_too_large"), (429, "rate_limit_error"), (502, "api_error"),
     (503, "overloaded_error")],
)  # fmt: skip
def test_errors_take_anthropic_s_shape(status: int, kind: str) -> None:
    assert error(status, "why") == {"type": "error", "error": {"type": kind, "message": "why"}}


def test_whole_answers_and_errors_through_the_translation() -> None:
    translation = MessagesAnswer("claude-x")
    answer = {"choices": [{"finish_reason": "stop", "message": {"content": "Paris."}}]}
    out = orjson.loads(translation.whole(orjson.dumps(answer)))
    assert out["content"] == [{"type": "text", "text": "Paris."}] and out["model"] == "claude-x"
    openai_error = {"error": {"message": "bad thing", "type": "invalid_request_error"}}
    assert orjson.loads(translation.error(400, orjson.dumps(openai_error))) == error(
        400, "bad thing"
    )
    assert orjson.loads(translation.error(502, b"<html>")) == error(502, "<html>")
