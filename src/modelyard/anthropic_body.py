"""Anthropic's Messages API in Chat Completions terms, and back (pure: no I/O).

``to_chat``: a ``POST /v1/messages`` body → the Chat Completions body an engine that does
not speak Messages is sent (system, content blocks, images, tools and tool results,
``stop_sequences``, ``thinking``), or what is wrong with it and where. ``message``: a Chat
Completions answer → a Messages answer. ``MessagesAnswer``: a Chat Completions stream →
the Messages event sequence (message_start, content blocks with their deltas,
message_delta with ``stop_reason`` and usage, message_stop), chunk by chunk. ``error``:
any error in Anthropic's shape.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson

from modelyard.chat_stream import ChatEvents, error_message, json_object

Problem = tuple[str, str]  # what is wrong, and the field at fault

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_ids = itertools.count(1)
# What the Messages API itself defines: read here, or of no use to an engine.
_MESSAGES_KEYS = frozenset(("model", "max_tokens", "messages", "system", "stop_sequences",
    "stream", "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking",
    "metadata", "service_tier", "container", "mcp_servers", "context_management"))  # fmt: skip


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(6).hex()}{next(_ids):06d}"


def error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# -- the request ------------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any] | Problem:
    """The Chat Completions body for a Messages ``body``, or the problem with it."""
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        return "`max_tokens` is required: a whole number of at least 1", "max_tokens"
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _text_of(system)
        if text is None:
            return "`system` must be a string or a list of text blocks", "system"
        messages.append({"role": "system", "content": text})
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        return "`messages` is required: a list of {role, content} objects", "messages"
    for i, message in enumerate(given):
        turned = _message(message, f"messages.{i}")
        if isinstance(turned, tuple):
            return turned
        messages += turned
    chat: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": max_tokens,
    }
    for key in ("temperature", "top_p", "top_k"):
        if key in body:
            chat[key] = body[key]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            return "`stop_sequences` must be a list of strings", "stop_sequences"
        chat["stop"] = stops
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the usage message_delta needs
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if isinstance(tools, tuple):
        return tools
    chat.update(tools)
    for key, value in body.items():  # an engine's own parameters pass (llama.cpp's, ...)
        if key not in _MESSAGES_KEYS:
            chat.setdefault(key, value)
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        chat["chat_template_kwargs"] = {"enable_thinking": True}
    elif isinstance(thinking, dict) and thinking.get("type") == "disabled":
        chat["chat_template_kwargs"] = {"enable_thinking": False}
    elif thinking is not None:
        return "`thinking` must be {type: enabled, budget_tokens} or {type: disabled}", "thinking"
    return chat


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in value
    ):
        return "\n\n".join(b["text"] for b in value)
    return None


def _message(message: Any, where: str) -> list[dict[str, Any]] | Problem:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        return f"`{where}` must be an object with `role` user or assistant", f"{where}.role"
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        return f"`{where}.content` must be a string or a list of blocks", f"{where}.content"
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            url = _image_url(block.get("source"))
            if url is None:
                why = "an image's `source` must be {type: base64, media_type, data} or {url}"
                return why, f"{at}.source"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                return "a tool_use block needs `id` and `name`", at
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                return "a tool_result block needs `tool_use_id`", f"{at}.tool_use_id"
            text = _result_text(block.get("content"))
            if text is None:
                return "a tool_result's `content` must be a string or text blocks", f"{at}.content"
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # an earlier turn's reasoning: not sent back to the engine
        else:
            return f"a {kind!r} block is not supported in a {role} message here", f"{at}.type"
    out = list(results)  # tool results answer the previous assistant turn: first
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        text = "".join(p["text"] for p in parts) if only_text else None
        out.append({"role": "user", "content": text if text is not None else parts})
    return out


def _image_url(source: Any) -> str | None:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    return None


def _result_text(content: Any) -> str | None:
    if content is None:
        return ""
    if isinstance(content, list):  # text blocks (an image in a tool result is dropped)
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return "\n".join(t for t in texts if isinstance(t, str))
    return content if isinstance(content, str) else None


def _tools(tools: Any, choice: Any) -> dict[str, Any] | Problem:
    out: dict[str, Any] = {}
    if tools is not None:
        if not isinstance(tools, list):
            return "`tools` must be a list", "tools"
        functions = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return "each tool needs a `name`", f"tools.{i}.name"
            if tool.get("type") not in (None, "custom"):  # a server tool: web search, ...
                return f"the server tool {tool.get('type')!r} is not available here", f"tools.{i}"
            function = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            functions.append({"type": "function", "function": function})
        if functions:
            out["tools"] = functions
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "auto":
            out["tool_choice"] = "auto"
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "none":
            out["tool_choice"] = "none"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            return (
                "`tool_choice` must be {type: auto|any|none} or {type: tool, name}",
                "tool_choice",
            )
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


# -- the answer -------------------------------------------------------------------------------


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
