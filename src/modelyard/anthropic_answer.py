"""A Chat Completions answer made an Anthropic Messages answer (pure: no I/O).

``message``: a whole Chat Completions answer → a Messages answer. ``MessagesAnswer``: a
Chat Completions stream → the Messages event sequence (message_start, content blocks with
their deltas, message_delta with ``stop_reason`` and usage, message_stop), chunk by chunk.
The request's side is ``anthropic_body``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson

from modelyard.anthropic_body import error
from modelyard.chat_stream import ChatEvents, error_message, json_object

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(6).hex()}{next(_ids):06d}"


def message(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """The Messages answer for a Chat Completions ``answer``."""
    choice = (answer.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(said.get("reasoning_content"), str) and said["reasoning_content"]:
        content.append({"type": "thinking", "thinking": said["reasoning_content"], "signature": ""})
    if isinstance(said.get("content"), str) and said["content"]:
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu"),
                "name": function.get("name", ""),
                "input": _arguments(function.get("arguments")),
            }
        )
    usage = answer.get("usage") or {}
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens") or 0,
            "output_tokens": usage.get("completion_tokens") or 0,
        },
    }


def _arguments(text: Any) -> Any:
    if isinstance(text, dict):
        return text
    try:
        found = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": text}  # the model wrote no JSON: the client sees what it wrote
    return found if isinstance(found, dict) else {"value": found}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessagesAnswer(ChatEvents):
    """A Chat Completions answer made a Messages answer (a proxy ``Translation``): stream
    chunks in, Messages events out (``feed``, ``end``); a whole answer (``whole``); an
    error in OpenAI's shape (``error``)."""

    content_type = "text/event-stream"

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self._started = False
        self._block: tuple[str, int] | None = None  # the open block: kind, index
        self._blocks = 0
        self._tools: dict[int, int] = {}  # the engine's tool call index → block index
        self._stop: str | None = None
        self._usage = {"input_tokens": 0, "output_tokens": 0}

    def whole(self, body: bytes) -> bytes:
        answer = json_object(body)
        return orjson.dumps(message(answer, self.model)) if answer is not None else body

    def error(self, status: int, body: bytes) -> bytes:
        return orjson.dumps(error(status, error_message(body)))

    def _done(self) -> bytes:
        return self._finish()

    def _chat_event(self, event: dict[str, Any]) -> bytes:
        if "error" in event:  # the gateway's or the engine's error event, mid-stream
            err = event["error"] if isinstance(event["error"], dict) else {}
            self._ended = True
            said = str(err.get("message", err))
            return _event("error", {"error": {"type": "api_error", "message": said}})
        out = self._start()
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage = {
                "input_tokens": usage.get("prompt_tokens") or 0,
                "output_tokens": usage.get("completion_tokens") or 0,
            }
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                out += self._open("thinking", {"thinking": "", "signature": ""})
                out += self._delta(
                    {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
                )
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._open("text", {"text": ""})
                out += self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                out += self._tool(call)
            if choice.get("finish_reason"):
                self._stop = _STOP.get(choice["finish_reason"], "end_turn")
        return out

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return _event(
            "message_start",
            {
                "message": {
                    "id": new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }
            },
        )

    def _open(self, kind: str, fields: dict[str, Any], key: int | None = None) -> bytes:
        if self._block is not None and self._block[0] == kind and kind != "tool_use":
            return b""
        out = self._close()
        index = self._blocks
        self._blocks += 1
        self._block = (kind, index)
        if key is not None:
            self._tools[key] = index
        block = {"index": index, "content_block": {"type": kind, **fields}}
        return out + _event("content_block_start", block)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        assert self._block is not None
        return _event("content_block_delta", {"index": self._block[1], "delta": delta})

    def _tool(self, call: dict[str, Any]) -> bytes:
        key = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        if key not in self._tools:  # a new call: its id and name come first
            fields = {
                "id": call.get("id") or new_id("toolu"),
                "name": function.get("name", ""),
                "input": {},
            }
            out += self._open("tool_use", fields, key)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            index = self._tools[key]
            out += _event(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}},
            )
        return out

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        index = self._block[1]
        self._block = None
        return _event("content_block_stop", {"index": index})

    def _finish(self) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        out = self._start() + self._close()
        out += _event(
            "message_delta",
            {
                "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": None},
                "usage": self._usage,
            },
        )
        return out + _event("message_stop", {})
