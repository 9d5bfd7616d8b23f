"""Anthropic's Messages API requests in Chat Completions terms (pure: no I/O).

``read``: what routing reads of a ``POST /v1/messages`` body (``openai_body.BodyFeatures``), or what
is wrong with it and where: every check, no translation, so that a request passed as it
came to an engine that speaks Messages pays for none. ``translate``: the Chat Completions
body an engine that does not speak Messages is sent (system, content blocks, images, tools
and tool results, ``stop_sequences``, ``thinking``), of a body ``read`` accepted;
``to_chat`` does both. ``error``: any error in Anthropic's shape. The answer's side is
``anthropic_answer``.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.openai_body import BodyFeatures

Problem = tuple[str, str]  # what is wrong, and the field at fault

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
# What the Messages API itself defines: read here, or of no use to an engine.
_MESSAGES_KEYS = frozenset(("model", "max_tokens", "messages", "system", "stop_sequences",
    "stream", "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking",
    "metadata", "service_tier", "container", "mcp_servers", "context_management"))  # fmt: skip
_THINKING = {"enabled": True, "disabled": False}
_ERROR = "Error: "  # before a tool result's text that says it failed


def error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def to_chat(body: dict[str, Any]) -> dict[str, Any] | Problem:
    """The Chat Completions body for a Messages ``body``, or the problem with it."""
    problem = read(body)
    return problem if isinstance(problem, tuple) else translate(body)


# -- reading: the checks, and what routing needs ----------------------------------------------


def read(body: dict[str, Any]) -> BodyFeatures | Problem:
    """What routing reads of a Messages ``body``, counted as its translation would be (the
    same features either way), or the problem with it."""
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        return "`max_tokens` is required: a whole number of at least 1", "max_tokens"
    said = BodyFeatures("", 0, 0, False, False, max_tokens)
    system = body.get("system")
    if system is not None:
        text = _text_of(system)
        if text is None:
            return "`system` must be a string or a list of text blocks", "system"
        said.chars, said.count = len(text), 1
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        return "`messages` is required: a list of {role, content} objects", "messages"
    for i, message in enumerate(given):
        problem = _read_message(message, i, said)
        if problem is not None:
            return problem
    if said.count == 0:
        return "`messages` has nothing to send: every message is empty", "messages"
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        return "`stop_sequences` must be a list of strings", "stop_sequences"
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if isinstance(tools, tuple):
        return tools
    thinking = body.get("thinking")
    if thinking is not None and (
        not isinstance(thinking, dict) or thinking.get("type") not in _THINKING
    ):
        return "`thinking` must be {type: enabled, budget_tokens} or {type: disabled}", "thinking"
    said.tools = "tools" in tools
    return said


def _read_message(message: Any, i: int, said: BodyFeatures) -> Problem | None:
    """A message read into ``said``, or the problem with it."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        return (
            f"`messages.{i}` must be an object with `role` user or assistant",
            f"messages.{i}.role",
        )
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        said.chars, said.count = said.chars + len(content), said.count + 1
        if role == "user":
            said.last_user = content
        return None
    if not isinstance(content, list):
        why = f"`messages.{i}.content` must be a string or a list of blocks"
        return why, f"messages.{i}.content"
    texts: list[str] = []
    image = False
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image" and role == "user":
            if _image_url(block.get("source")) is None:
                why = "an image's `source` must be {type: base64, media_type, data} or {url}"
                return why, f"messages.{i}.content.{j}.source"
            image = True
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                return "a tool_use block needs `id` and `name`", f"messages.{i}.content.{j}"
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                return (
                    "a tool_result block needs `tool_use_id`",
                    f"messages.{i}.content.{j}.tool_use_id",
                )
            text = _result_text(block.get("content"))
            if text is None:
                why = "a tool_result's `content` must be a string or text blocks"
                return why, f"messages.{i}.content.{j}.content"
            said.chars += len(text) + (len(_ERROR) if block.get("is_error") else 0)
            said.count += 1  # a tool message of its own
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # an earlier turn's reasoning: not sent back to the engine
        else:
            why = f"a {kind!r} block is not supported in a {role} message here"
            return why, f"messages.{i}.content.{j}.type"
    if role == "assistant":  # always a turn, its text joined
        said.chars, said.count = said.chars + sum(map(len, texts)), said.count + 1
    elif texts or image:  # else tool results alone
        text = "\n".join(texts) if image else "".join(texts)  # as features joins parts
        said.chars, said.count = said.chars + len(text), said.count + 1
        said.last_user, said.images = text, said.images or image
    return None


# -- translating: a body read accepted --------------------------------------------------------


def translate(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions body for a Messages ``body`` that ``read`` accepted."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system)})
    for message in body["messages"]:
        messages += _turn(message)
    chat: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for key in ("temperature", "top_p", "top_k"):
        if key in body:
            chat[key] = body[key]
    if body.get("stop_sequences") is not None:
        chat["stop"] = body["stop_sequences"]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the usage message_delta needs
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    assert isinstance(tools, dict), "read accepted the tools"
    chat.update(tools)
    for key, value in body.items():  # an engine's own parameters pass (llama.cpp's, ...)
        if key not in _MESSAGES_KEYS:
            chat.setdefault(key, value)
    thinking = body.get("thinking")
    if thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": _THINKING[thinking["type"]]}
    return chat


def _turn(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's Chat Completions messages: its tool results first (they answer the
    previous assistant turn), then the turn itself."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block["source"])}})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block["name"], "arguments": arguments}
            calls.append({"id": block["id"], "type": "function", "function": function})
        elif kind == "tool_result":
            text = _result_text(block.get("content"))
            if block.get("is_error"):
                text = f"{_ERROR}{text}"
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append(
            {"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts}
        )
    return out


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in value
    ):
        return "\n\n".join(b["text"] for b in value)
    return None


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
