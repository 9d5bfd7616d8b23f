"""Ollama's API ↔ OpenAI's, table by table (modelyard.ollama_body, modelyard.ollama_stream).

Every answer is checked against the official ``ollama`` client's own types, and once end to
end through the client itself (an httpx mock transport in place of the network).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import orjson
import pytest
from ollama._types import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ShowResponse,
)

from modelyard.ollama_body import (
    ChatAnswer,
    GenerateAnswer,
    chat_request,
    embed_answer,
    embed_request,
    generate_request,
    keep_alive_seconds,
    load_answer,
    model_entry,
    ps_entry,
    show_body,
    tag_name,
    untag,
)

NOW = 1_700_000_000.0
AT = "2023-11-14T22:13:20.000000Z"  # NOW, as Ollama writes it
PNG, JPEG = "iVBORw0KGgoAAAANSUhEUg==", "/9j/4AAQSkZJRg=="
USER = [{"role": "user", "content": "hi"}]


def ticks(*times: float) -> Callable[[], float]:
    """A monotonic clock that says ``times`` in turn, then the last for ever."""
    it: Iterator[float] = iter(times)
    last = [times[-1]]

    def clock() -> float:
        last[0] = next(it, last[0])
        return last[0]

    return clock


def chat(**body: Any) -> dict[str, Any]:
    out = chat_request({"model": "gemma-a", "messages": USER, **body})
    assert isinstance(out, dict), out
    return out


# -- requests ---------------------------------------------------------------------------------

SAMPLING = {
    "temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7,
    "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25, "typical_p": 0.8,
}  # fmt: skip


@pytest.mark.parametrize(
    ("given", "expected", "absent"),
    [
        # The sampling llama-server takes passes; num_ctx, mirostat, num_gpu do not.
        ({"options": {**SAMPLING, "num_predict": 128, "stop": ["\n\n"], "num_ctx": 8192,
                      "mirostat": 2, "num_gpu": 99}},
         {**SAMPLING, "max_tokens": 128, "stop": ["\n\n"]}, ["num_ctx", "mirostat", "num_gpu"]),
        ({"options": {"num_predict": -1}}, {}, ["max_tokens"]),  # no limit
        ({"options": {"num_predict": -2}}, {}, ["max_tokens"]),  # fill the window
        ({"options": {"num_predict": 0}}, {}, ["max_tokens"]),  # Ollama: no limit either
        ({"options": {"stop": "END", "seed": 3.0}}, {"stop": ["END"], "seed": 3}, []),
        ({"options": {"temperature": None}}, {}, ["temperature"]),
        ({"format": "json"}, {"response_format": {"type": "json_object"}}, []),
        ({"format": {"type": "object", "properties": {"a": {"type": "integer"}}}},
         {"response_format": {"type": "json_schema", "json_schema": {"name": "schema",
          "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}, []),
        ({"format": ""}, {}, ["response_format"]),
        ({"think": True}, {"chat_template_kwargs": {"enable_thinking": True}},
         ["reasoning_effort"]),
        ({"think": False}, {"chat_template_kwargs": {"enable_thinking": False}},
         ["reasoning_effort"]),
        ({"think": "low"},
         {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"}, []),
        ({"think": "high"},
         {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}, []),
        ({}, {"stream": True, "stream_options": {"include_usage": True}}, []),  # absent: true
        ({"stream": None}, {"stream": True, "stream_options": {"include_usage": True}}, []),
        ({"stream": False}, {}, ["stream", "stream_options"]),
        ({"keep_alive": "5m", "context": [1, 2], "template": "{{ .Prompt }}"}, {},
         ["keep_alive", "context", "template"]),
        ({"tools": []}, {}, ["tools"]),
    ],
)  # fmt: skip
def test_chat_options_format_think_and_stream(
    given: dict[str, Any], expected: dict[str, Any], absent: list[str]
) -> None:
    out = chat(**given)
    assert {k: out.get(k) for k in expected} == expected
    assert [k for k in absent if k in out] == []
    assert out["model"] == "gemma-a" and out["messages"] == USER


def test_messages_images_tool_calls_and_tool_results() -> None:
    out = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What are these?", "images": [PNG, JPEG]},
            {"role": "assistant", "content": "", "thinking": "Two lookups.", "tool_calls": [
                {"function": {"name": "look", "arguments": {"q": "cat"}}},
                {"function": {"name": "time", "arguments": {}}},
            ]},
            # The results come in another order: matched by tool_name.
            {"role": "tool", "content": "12:00", "tool_name": "time"},
            {"role": "tool", "content": "a cat"},  # no name: the first unanswered call
            {"role": "assistant", "content": "A cat, at noon."},
            {"role": "user", "content": "", "images": ["data:image/gif;base64,R0lGOD"]},
            {"role": "assistant", "tool_calls": [
                {"id": "call_x", "function": {"name": "look", "arguments": '{"q": "dog"}'}},
            ]},
            {"role": "tool", "content": "a dog", "tool_call_id": "call_x"},  # newer clients
            {"role": "tool", "content": "late", "tool_name": "look"},  # nothing left to answer
        ],
        tools=[{"type": "function", "function": {"name": "look", "description": "Look it up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                               "required": ["q"]}}},
               {"function": {"name": "time", "parameters": None}}],
    )  # fmt: skip
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
            {"type": "text", "text": "What are these?"},
        ]},
        {"role": "assistant", "content": None, "reasoning_content": "Two lookups.", "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "look", "arguments": '{"q":"cat"}'}},
            {"id": "call_1", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00", "name": "time"},
        {"role": "tool", "tool_call_id": "call_0", "content": "a cat"},
        {"role": "assistant", "content": "A cat, at noon."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGOD"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function",
             "function": {"name": "look", "arguments": '{"q": "dog"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_x", "content": "a dog"},
        {"role": "tool", "tool_call_id": "call_2", "content": "late", "name": "look"},
    ]  # fmt: skip
    look = {"name": "look", "description": "Look it up", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}  # fmt: skip
    assert out["tools"] == [
        {"type": "function", "function": look},
        {"type": "function", "function": {"name": "time"}},  # a null is not sent on
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (300, 300.0), (2.5, 2.5), (0, 0.0), ("0", 0.0), (-1, math.inf),
     ("-1", math.inf), ("-5m", math.inf), ("5m", 300.0), ("300s", 300.0), ("1h30m", 5400.0),
     ("1.5h", 5400.0), ("250ms", 0.25), ("2h0m0s", 7200.0), ("90", 90.0), (" 10m ", 600.0)],
)  # fmt: skip
def test_keep_alive_forms(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "5 m", "5x", "m", "1h30", "forever", True, [5], {}])
def test_keep_alive_that_is_no_duration_is_a_problem(value: Any) -> None:
    problem = keep_alive_seconds(value)
    assert isinstance(problem, tuple) and problem[1] == "keep_alive", problem
    assert chat(keep_alive=0) and chat_request({"model": "m", "keep_alive": value}) == problem


GEN = {"model": "coder"}


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        ({**GEN, "prompt": "Why?", "system": "Be brief.", "images": [PNG], "stream": False,
          "options": {"num_predict": 32}, "think": "medium"},
         "/chat/completions",
         {**GEN, "messages": [
             {"role": "system", "content": "Be brief."},
             {"role": "user", "content": [
                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                 {"type": "text", "text": "Why?"}]}],
          "max_tokens": 32, "chat_template_kwargs": {"enable_thinking": True},
          "reasoning_effort": "medium"}),
        ({**GEN, "prompt": "Why?", "format": "json"}, "/chat/completions",
         {**GEN, "messages": [{"role": "user", "content": "Why?"}], "stream": True,
          "stream_options": {"include_usage": True},
          "response_format": {"type": "json_object"}}),
        # raw: no template, so no thinking switch either; a schema as llama-server takes it
        ({**GEN, "prompt": "<|im_start|>user", "raw": True, "think": True, "stream": False,
          "format": {"type": "object"}, "options": {"temperature": 0, "num_predict": 8}},
         "/completions",
         {**GEN, "prompt": "<|im_start|>user", "temperature": 0, "max_tokens": 8,
          "json_schema": {"type": "object"}}),
        ({**GEN, "prompt": "x", "raw": True, "format": "json"}, "/completions",
         {**GEN, "prompt": "x", "stream": True, "stream_options": {"include_usage": True},
          "json_schema": {}}),
        # suffix: fill in the middle, at llama-server's /infill (its own parameter names)
        ({**GEN, "prompt": "def add(a, b):\n", "suffix": "\n\nprint(add(1, 2))",
          "options": {"num_predict": 64, "top_k": 20, "stop": ["\n\n"]}},
         "/infill",
         {**GEN, "input_prefix": "def add(a, b):\n", "input_suffix": "\n\nprint(add(1, 2))",
          "stream": True, "n_predict": 64, "top_k": 20, "stop": ["\n\n"]}),
        ({**GEN, "prompt": "a", "suffix": "b", "raw": True, "stream": False}, "/infill",
         {**GEN, "input_prefix": "a", "input_suffix": "b"}),
        # what the official client sends with no prompt: load the model, ask nothing
        ({**GEN, "prompt": "", "suffix": "", "stream": False, "keep_alive": 0}, None, GEN),
        ({**GEN}, None, GEN),
        ({**GEN, "prompt": "Why?", "suffix": "", "raw": False, "context": [1, 2, 3]},
         "/chat/completions",
         {**GEN, "messages": [{"role": "user", "content": "Why?"}], "stream": True,
          "stream_options": {"include_usage": True}}),
    ],
)  # fmt: skip
def test_generate_goes_where_it_can_be_answered(
    body: dict[str, Any], path: str | None, expected: dict[str, Any]
) -> None:
    assert generate_request(body) == (path, expected)


@pytest.mark.parametrize(
    ("body", "legacy", "expected"),
    [
        ({"model": "e", "input": "one"}, False,
         {"model": "e", "input": ["one"], "encoding_format": "float"}),
        ({"model": "e", "input": ["one", "two"], "truncate": False, "dimensions": 256,
          "keep_alive": "1h", "options": {"num_ctx": 512}}, False,
         {"model": "e", "input": ["one", "two"], "encoding_format": "float", "dimensions": 256}),
        ({"model": "e", "input": []}, False,  # load only
         {"model": "e", "input": [], "encoding_format": "float"}),
        ({"model": "e", "prompt": "one"}, True,
         {"model": "e", "input": ["one"], "encoding_format": "float"}),
        ({"model": "e", "prompt": ""}, True,
         {"model": "e", "input": [], "encoding_format": "float"}),
    ],
)  # fmt: skip
def test_embed_requests(body: dict[str, Any], legacy: bool, expected: dict[str, Any]) -> None:
    assert embed_request(body, legacy=legacy) == expected


M = {"model": "m"}


@pytest.mark.parametrize(
    ("call", "body", "field", "says"),
    [
        (chat_request, [], "body", "JSON object"),
        (chat_request, {"messages": USER}, "model", "required"),
        (chat_request, {**M, "messages": "hi"}, "messages", "list"),
        (chat_request, {**M, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role",
         "system, user, assistant or tool"),
        (chat_request, {**M, "messages": [{"role": "user", "content": 5}]},
         "messages.0.content", "string"),
        (chat_request, {**M, "messages": [{"role": "user", "images": "abc"}]},
         "messages.0.images", "base64"),
        (chat_request, {**M, "messages": [{"role": "assistant", "images": [PNG]}]},
         "messages.0.images", "user messages"),
        (chat_request, {**M, "messages": [{"role": "assistant", "tool_calls": [{}]}]},
         "messages.0.tool_calls.0", "function.name"),
        (chat_request, {**M, "messages": [{"role": "assistant", "tool_calls": {}}]},
         "messages.0.tool_calls", "list"),
        (chat_request, {**M, "tools": {}}, "tools", "list"),
        (chat_request, {**M, "tools": [{"type": "function"}]}, "tools.0.function.name", "name"),
        (chat_request, {**M, "tools": [{"type": "web", "function": {"name": "w"}}]},
         "tools.0.type", "function tools"),
        (chat_request, {**M, "options": [1]}, "options", "object"),
        (chat_request, {**M, "options": {"temperature": "hot"}}, "options.temperature", "number"),
        (chat_request, {**M, "options": {"num_predict": True}}, "options.num_predict", "number"),
        (chat_request, {**M, "options": {"stop": [1]}}, "options.stop", "list of strings"),
        (chat_request, {**M, "format": "xml"}, "format", "JSON schema"),
        (chat_request, {**M, "think": "max"}, "think", "low, medium, high"),
        (chat_request, {**M, "think": 1}, "think", "low, medium, high"),
        (chat_request, {**M, "stream": "yes"}, "stream", "true or false"),
        (chat_request, {**M, "keep_alive": "soon"}, "keep_alive", "duration"),
        (generate_request, {**M, "prompt": 5}, "prompt", "string"),
        (generate_request, {**M, "prompt": "x", "suffix": 1}, "suffix", "string"),
        (generate_request, {**M, "prompt": "x", "raw": "yes"}, "raw", "true or false"),
        (generate_request, {**M, "prompt": "x", "raw": True, "system": "s"}, "system", "raw"),
        (generate_request, {**M, "prompt": "x", "raw": True, "images": [PNG]}, "images", "raw"),
        (generate_request, {**M, "prompt": "x", "suffix": "y", "images": [PNG]}, "images",
         "suffix"),
        (generate_request, {**M, "prompt": "x", "format": 5}, "format", "JSON schema"),
        (generate_request, {**M, "keep_alive": "later"}, "keep_alive", "duration"),
        (generate_request, {"prompt": "x"}, "model", "required"),
        (embed_request, {**M, "input": [1]}, "input", "list of strings"),
        (embed_request, {**M, "input": "x", "truncate": "no"}, "truncate", "true or false"),
        (embed_request, {**M, "input": "x", "dimensions": 0}, "dimensions", "at least 1"),
        (embed_request, {**M, "input": "x", "keep_alive": []}, "keep_alive", "duration"),
        (embed_request, {"model": "", "input": "x"}, "model", "required"),
    ],
)  # fmt: skip
def test_what_is_wrong_is_named(call: Any, body: Any, field: str, says: str) -> None:
    problem = call(body)
    assert isinstance(problem, tuple) and len(problem) == 2, problem
    assert problem[1] == field and says in problem[0], problem


def test_legacy_embeddings_take_one_prompt() -> None:
    assert embed_request({"model": "e", "prompt": ["a"]}, legacy=True) == (
        "`prompt` must be a string",
        "prompt",
    )


# -- streamed answers -------------------------------------------------------------------------


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


def finish(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


TIMINGS = {"prompt_n": 9, "prompt_ms": 12.5, "predicted_n": 5, "predicted_ms": 250.0}
USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}}
# With the clock at 10.0 (made), 10.25 (first chunk), 12.0 (done):
TIMED = {"total_duration": 2_000_000_000, "load_duration": 1_737_500_000,
         "prompt_eval_count": 9, "prompt_eval_duration": 12_500_000,
         "eval_count": 5, "eval_duration": 250_000_000}  # fmt: skip
MEASURED = {"total_duration": 2_000_000_000, "load_duration": 0,
            "prompt_eval_count": 9, "prompt_eval_duration": 250_000_000,
            "eval_count": 5, "eval_duration": 1_750_000_000}  # fmt: skip


def look(pieces: list[str]) -> list[dict[str, Any]]:
    first = {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "look", "arguments": ""}}  # fmt: skip
    return [delta(tool_calls=[first])] + [
        delta(tool_calls=[{"index": 0, "function": {"arguments": p}}]) for p in pieces
    ]


CHAT_STREAM = sse(
    delta(role="assistant", content=""),  # says nothing: no line
    delta(reasoning_content="Hm."),
    delta(content="Hello"),
    delta(content=" there."),
    *look(['{"q": ', '"cat"}']),
    delta(tool_calls=[{"index": 1, "id": "call_b",
                       "function": {"name": "time", "arguments": "{}"}}]),
    finish("tool_calls"),
    {**USAGE, "timings": TIMINGS},
)  # fmt: skip


def said(message: dict[str, Any], done: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gemma-a", "created_at": AT, "message": {"role": "assistant", **message},
            "done": done, **extra}  # fmt: skip


def call(call_id: str, index: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "function": {"index": index, "name": name, "arguments": arguments}}


CHAT_LINES = [
    said({"content": "", "thinking": "Hm."}),
    said({"content": "Hello"}),
    said({"content": " there."}),
    # Ollama sends a call whole: the first once the second starts, the second at the finish.
    said({"content": "", "tool_calls": [call("call_a", 0, "look", {"q": "cat"})]}),
    said({"content": "", "tool_calls": [call("call_b", 1, "time", {})]}),
    said({"content": ""}, done=True, done_reason="stop", **TIMED),
]


def run(answer: ChatAnswer | GenerateAnswer, stream: bytes, size: int) -> bytes:
    out = b"".join(answer.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    return out + answer.end()


def lines(out: bytes) -> list[dict[str, Any]]:
    assert out.endswith(b"\n")
    return [orjson.loads(line) for line in out.split(b"\n")[:-1]]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_chat_stream_in_any_chunking(size: int) -> None:
    answer = ChatAnswer("gemma-a", True, clock=ticks(10.0, 10.25, 12.0), now=lambda: NOW)
    assert answer.content_type == "application/x-ndjson"
    found = lines(run(answer, CHAT_STREAM, size))
    assert found == CHAT_LINES
    for line in found:
        ChatResponse.model_validate(line)


def gen(response: str, done: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "coder", "created_at": AT, "response": response, "done": done, **extra}


INFILL_TIMINGS = {"prompt_n": 7, "prompt_ms": 5.0, "predicted_n": 2, "predicted_ms": 20.0}
INFILL_DONE = {"total_duration": 2_000_000_000, "load_duration": 1_975_000_000,
               "prompt_eval_count": 7, "prompt_eval_duration": 5_000_000,
               "eval_count": 2, "eval_duration": 20_000_000}  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (sse(delta(reasoning_content="Hm."), delta(content="Be"), delta(content="cause."),
             finish("stop"), USAGE),
         [gen("", thinking="Hm."), gen("Be"), gen("cause."),
          gen("", True, done_reason="stop", context=[], **MEASURED)]),
        # /completions (raw): text, cut by the limit
        (sse({"choices": [{"index": 0, "text": "def", "finish_reason": None}]},
             {"choices": [{"index": 0, "text": " f", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 5}, "timings": TIMINGS}),
         [gen("def"), gen(" f"), gen("", True, done_reason="length", context=[], **TIMED)]),
        # llama-server's /infill: its own lines, the last with stop: true, and no [DONE]
        (sse({"content": "x = ", "stop": False}, {"content": "1", "stop": False},
             {"content": "", "stop": True, "stop_type": "limit", "tokens_evaluated": 7,
              "tokens_predicted": 2, "timings": INFILL_TIMINGS}, done=False),
         [gen("x = "), gen("1"), gen("", True, done_reason="length", context=[], **INFILL_DONE)]),
    ],
)  # fmt: skip
@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_generate_stream_of_each_kind_in_any_chunking(
    stream: bytes, expected: list[dict[str, Any]], size: int
) -> None:
    answer = GenerateAnswer("coder", True, clock=ticks(10.0, 10.25, 12.0), now=lambda: NOW)
    found = lines(run(answer, stream, size))
    assert found == expected
    for line in found:
        GenerateResponse.model_validate(line)


def test_infill_ends_on_its_last_line_without_done() -> None:
    answer = GenerateAnswer("coder", True, clock=ticks(10.0, 10.25, 12.0), now=lambda: NOW)
    last = sse({"content": "", "stop": True, "stop_type": "eos"}, done=False)
    out = answer.feed(last)
    assert orjson.loads(out)["done_reason"] == "stop" and answer.end() == b""


def test_an_error_mid_stream_is_the_last_line() -> None:
    answer = ChatAnswer("gemma-a", True, clock=ticks(10.0), now=lambda: NOW)
    out = answer.feed(sse(delta(content="Hel"), done=False))
    out += answer.feed(b'data: {"error": {"message": "gemma-a sent nothing for 5s", "code": 504}}')
    out += answer.feed(b"\n\n" + sse(delta(content="lo"), finish("stop"), USAGE))
    found = lines(out + answer.end())
    assert found == [said({"content": "Hel"}), {"error": "gemma-a sent nothing for 5s"}]
    with pytest.raises(ollama.ResponseError, match="sent nothing"):
        list(_client_reads(lambda r: httpx.Response(200, content=out)).chat("m", stream=True))


@pytest.mark.parametrize("size", [1, 100_000])
def test_not_streamed_the_pieces_make_one_object(size: int) -> None:
    answer = ChatAnswer("gemma-a", False, clock=ticks(10.0, 10.25, 12.0), now=lambda: NOW)
    assert answer.content_type == "application/json"
    out = orjson.loads(run(answer, CHAT_STREAM, size))
    calls = [call("call_a", 0, "look", {"q": "cat"}), call("call_b", 1, "time", {})]
    message = {"content": "Hello there.", "thinking": "Hm.", "tool_calls": calls}
    assert out == said(message, done=True, done_reason="stop", **TIMED)
    ChatResponse.model_validate(out)


def test_calls_without_ids_or_json_still_reach_the_client() -> None:
    answer = ChatAnswer("m", True, clock=ticks(1.0), now=lambda: NOW)
    stream = sse(
        delta(tool_calls=[{"index": 0, "function": {"name": "a", "arguments": "not json"}}]),
        delta(tool_calls=[{"index": 1, "function": {"name": "b", "arguments": "[1]"}}]),
    )  # no finish_reason: the end completes them
    found = lines(run(answer, stream, 100_000))
    first, second = (line["message"]["tool_calls"][0] for line in found[:2])
    assert re.fullmatch(r"call_[0-9a-f]{12}", first["id"]) and first["id"] != second["id"]
    assert first["function"]["arguments"] == {"_raw": "not json"}
    assert second["function"]["arguments"] == {"value": [1]}
    assert found[2]["done"] is True
    for line in found:
        ChatResponse.model_validate(line)


# -- whole answers and errors -----------------------------------------------------------------

TOOL_CALL = {"id": "call_9", "type": "function",
             "function": {"name": "look", "arguments": '{"q": "cat"}'}}  # fmt: skip
WHOLE = {"total_duration": 1_500_000_000, "load_duration": 0, "prompt_eval_count": 12,
         "prompt_eval_duration": 0, "eval_count": 7, "eval_duration": 1_500_000_000}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "answer", "expected"),
    [
        (ChatAnswer,
         {"choices": [{"finish_reason": "tool_calls", "message": {
             "role": "assistant", "content": "Looking.", "reasoning_content": "Hm.",
             "tool_calls": [TOOL_CALL]}}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 7}},
         {"model": "m", "created_at": AT, "message": {
             "role": "assistant", "content": "Looking.", "thinking": "Hm.",
             "tool_calls": [call("call_9", 0, "look", {"q": "cat"})]},
          "done": True, "done_reason": "stop", **WHOLE}),
        (ChatAnswer,
         {"choices": [{"finish_reason": "length", "message": {"content": "Pa"}}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 5}, "timings": TIMINGS},
         {"model": "m", "created_at": AT, "message": {"role": "assistant", "content": "Pa"},
          "done": True, "done_reason": "length", **TIMED, "total_duration": 1_500_000_000,
          "load_duration": 1_237_500_000}),
        (GenerateAnswer,
         {"choices": [{"text": "ok", "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 7}},
         {"model": "m", "created_at": AT, "response": "ok", "done": True, "done_reason": "stop",
          "context": [], **WHOLE}),
        (GenerateAnswer,
         {"choices": [{"finish_reason": "stop",
                       "message": {"content": "Because.", "reasoning_content": "Hm."}}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 7}},
         {"model": "m", "created_at": AT, "response": "Because.", "thinking": "Hm.",
          "done": True, "done_reason": "stop", "context": [], **WHOLE}),
        (GenerateAnswer,
         {"content": "x = 1", "stop": True, "stop_type": "eos", "tokens_evaluated": 7,
          "tokens_predicted": 2, "timings": INFILL_TIMINGS},
         {"model": "m", "created_at": AT, "response": "x = 1", "done": True,
          "done_reason": "stop", "context": [], **INFILL_DONE,
          "total_duration": 1_500_000_000, "load_duration": 1_475_000_000}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
def test_whole_answers(
    kind: Any, answer: dict[str, Any], expected: dict[str, Any], stream: bool
) -> None:
    translation = kind("m", stream, clock=ticks(10.0, 11.5), now=lambda: NOW)
    out = translation.whole(orjson.dumps(answer))
    assert out.endswith(b"\n") is stream  # streamed: one NDJSON line
    assert orjson.loads(out) == expected
    (ChatResponse if kind is ChatAnswer else GenerateResponse).model_validate(orjson.loads(out))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "bad thing", "type": "invalid_request_error"}}', "bad thing"),
        (b'{"error": "no such model"}', "no such model"),
        (b"<html>502</html>", "<html>502</html>"),
    ],
)
@pytest.mark.parametrize("kind", [ChatAnswer, GenerateAnswer])
def test_errors_take_ollama_s_shape(kind: Any, body: bytes, message: str) -> None:
    assert orjson.loads(kind("m", True).error(400, body)) == {"error": message}


def test_load_only_answers() -> None:
    chat_load = load_answer("gemma-a", chat=True, now=NOW)
    assert chat_load == {"model": "gemma-a", "created_at": AT,
                         "message": {"role": "assistant", "content": ""},
                         "done": True, "done_reason": "load"}  # fmt: skip
    ChatResponse.model_validate(chat_load)
    unload = load_answer("coder", chat=False, unload=True, now=NOW)
    assert unload == {"model": "coder", "created_at": AT, "response": "", "done": True,
                      "done_reason": "unload"}  # fmt: skip
    GenerateResponse.model_validate(unload)


def test_embeddings_answers() -> None:
    packed = base64.b64encode(struct.pack("<2f", 0.5, -0.25)).decode()
    answer = {"data": [{"index": 1, "embedding": packed}, {"index": 0, "embedding": [1, 0.5]}],
              "usage": {"prompt_tokens": 6, "total_tokens": 6}}  # fmt: skip
    out = embed_answer(answer, "e", False, took=0.125)
    assert out == {"model": "e", "embeddings": [[1.0, 0.5], [0.5, -0.25]],
                   "total_duration": 125_000_000, "load_duration": 0,
                   "prompt_eval_count": 6}  # fmt: skip
    EmbedResponse.model_validate(out)
    legacy = embed_answer(answer, "e", True)
    assert legacy == {"embedding": [1.0, 0.5]}
    EmbeddingsResponse.model_validate(legacy)
    assert embed_answer({"data": []}, "e", True) == {"embedding": []}
    assert embed_answer({"data": []}, "e", False)["embeddings"] == []


# -- listings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [("gemma-a", "gemma-a:latest"), ("gemma-a:q8", "gemma-a:q8"), ("org/m", "org/m:latest"),
     ("registry:5000/org/m", "registry:5000/org/m:latest"),
     ("hf.co/o/m:Q4_K_M", "hf.co/o/m:Q4_K_M")],
)  # fmt: skip
def test_tag_name(name: str, shown: str) -> None:
    assert tag_name(name) == shown


KNOWN = {"gemma-a", "qwen:7b", "llama:latest"}


@pytest.mark.parametrize(
    ("asked", "meant"),
    [("gemma-a", "gemma-a"), ("gemma-a:latest", "gemma-a"), ("qwen:7b", "qwen:7b"),
     ("llama", "llama:latest"), ("llama:latest", "llama:latest"), ("qwen", None),
     ("qwen:latest", None), ("gemma-a:7b", None), ("other", None)],
)  # fmt: skip
def test_untag(asked: str, meant: str | None) -> None:
    assert untag(asked, KNOWN) == meant


DETAILS = {"parent_model": "", "format": "gguf", "family": "gemma3", "families": ["gemma3"],
           "parameter_size": "270M", "quantization_level": "Q4_K_M"}  # fmt: skip


def test_tags_and_ps_entries() -> None:
    entry = model_entry("gemma-a", 253_000_000, NOW, "gemma3", "270M", "Q4_K_M")
    digest = hashlib.sha256(b"gemma-a:latest").hexdigest()
    assert entry == {"name": "gemma-a:latest", "model": "gemma-a:latest", "modified_at": AT,
                     "size": 253_000_000, "digest": digest, "details": DETAILS}  # fmt: skip
    listed = ListResponse.model_validate({"models": [entry]}).models[0]
    assert listed.model == "gemma-a:latest" and listed.modified_at is not None
    assert listed.details is not None and listed.details.quantization_level == "Q4_K_M"
    bare = model_entry("x", 1, NOW, None, None, None, 4096)
    assert bare["details"]["families"] is None and bare["context_length"] == 4096
    ListResponse.Model.model_validate(bare)

    running = ps_entry("gemma-a", 300, 200, NOW + 300, "gemma3", "270M", "Q4_K_M", 8192)
    assert running == {"name": "gemma-a:latest", "model": "gemma-a:latest", "size": 300,
                       "digest": digest, "details": DETAILS,
                       "expires_at": "2023-11-14T22:18:20.000000Z", "size_vram": 200,
                       "context_length": 8192}  # fmt: skip
    process = ProcessResponse.model_validate({"models": [running]}).models[0]
    assert process.size_vram == 200 and process.context_length == 8192
    forever = ps_entry("gemma-a", 300, 200, math.inf, "gemma3", None, None, None)
    assert ProcessResponse.Model.model_validate(forever).expires_at.year == 9999  # type: ignore[union-attr]


def test_show_body() -> None:
    body = show_body(
        "qwen:7b", "qwen2", "7.6B", "Q4_K_M", 32768, {"tools", "completion", "thinking"}, NOW,
        template="{{ .Prompt }}", parameters={"stop": ["<|im_end|>", "<|endoftext|>"]},
    )  # fmt: skip
    assert body["capabilities"] == ["completion", "tools", "thinking"]  # Ollama's order
    assert body["model_info"] == {"general.architecture": "qwen2", "qwen2.context_length": 32768}
    params = [line.split(None, 1) for line in body["parameters"].split("\n")]
    assert params == [["stop", '"<|im_end|>"'], ["stop", '"<|endoftext|>"'], ["num_ctx", "32768"]]
    assert body["modelfile"].splitlines()[1:] == [
        "FROM qwen:7b",
        'TEMPLATE """{{ .Prompt }}"""',
        *(f"PARAMETER {line}" for line in body["parameters"].split("\n")),
    ]
    shown = ShowResponse.model_validate(body)
    assert shown.modelinfo == body["model_info"] and shown.template == "{{ .Prompt }}"
    assert shown.details is not None and shown.details.family == "qwen2"
    plain = show_body("e", None, None, None, None, ["embedding"], NOW)
    assert plain["model_info"] == {"general.architecture": "unknown"} and plain["parameters"] == ""
    with pytest.raises(ValueError, match="sing"):
        show_body("e", None, None, None, None, ["sing"], NOW)


# -- the official client, end to end ----------------------------------------------------------


def _client_reads(handler: Callable[[httpx.Request], httpx.Response]) -> ollama.Client:
    return ollama.Client(host="http://ollama.test", transport=httpx.MockTransport(handler))


def test_the_official_client_reads_what_it_is_sent() -> None:
    """The client's own requests translate, and our answers parse as its results."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content or b"{}")  # GET /api/ps has none
        clock = ticks(10.0, 10.25, 12.0)
        if request.url.path == "/api/chat":
            asked = chat_request(body)
            assert isinstance(asked, dict), asked
            assert asked["tools"][0]["function"]["name"] == "look"
            assert asked["messages"][0]["content"][0]["type"] == "image_url"
            assert asked["chat_template_kwargs"] == {"enable_thinking": True}
            answer = ChatAnswer(body["model"], asked.get("stream") is True, clock=clock)
            return httpx.Response(200, content=run(answer, CHAT_STREAM, 64))
        if request.url.path == "/api/generate":
            infill = {"model": "coder", "input_prefix": "x = ", "input_suffix": "\n"}
            assert generate_request(body) == ("/infill", infill)
            whole = {"content": "x = 1", "stop": True, "stop_type": "eos"}
            out = GenerateAnswer(body["model"], False, clock=clock).whole(orjson.dumps(whole))
            return httpx.Response(200, content=out)
        if request.url.path == "/api/embed":
            assert embed_request(body) == {"model": "e", "input": ["a"], "encoding_format": "float"}
            vectors = {"data": [{"index": 0, "embedding": [0.5]}]}
            return httpx.Response(200, json=embed_answer(vectors, "e", False))
        return httpx.Response(400, content=ChatAnswer("m", False).error(400, b'{"error": "no"}'))

    def look(q: str) -> str:
        """Look it up.

        Args:
          q: what to look up
        """
        return q

    client = _client_reads(handler)
    image = {"role": "user", "content": "What is it?", "images": [PNG]}
    parts = list(client.chat("gemma-a", messages=[image], tools=[look], stream=True, think=True))
    assert "".join(p.message.content or "" for p in parts) == "Hello there."
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("look", {"q": "cat"}),
        ("time", {}),
    ]
    assert parts[-1].done and parts[-1].eval_count == 5 and parts[-1].eval_duration == 250_000_000
    filled = client.generate("coder", prompt="x = ", suffix="\n")
    assert filled.response == "x = 1" and filled.done_reason == "stop"
    assert client.embed("e", "a").embeddings == [[0.5]]
    with pytest.raises(ollama.ResponseError, match="no"):
        client.ps()
