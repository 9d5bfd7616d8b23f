"""OpenAI's Responses API in Chat Completions terms, and back (pure: no I/O).

``to_chat``: a ``POST /v1/responses`` body → the Chat Completions body an engine that does
not speak Responses is sent (input items, instructions, images, function calls and their
outputs, function tools, ``tool_choice``, ``text.format``, ``reasoning.effort``), or what is
wrong with it and where. ``declined_tools``: the built-in tools (web search, code
interpreter, ...) ``to_chat`` left out, which no engine here runs. ``response``: a Chat
Completions answer → a Responses ``response`` object. ``error_body``: an error answer in
OpenAI's shape, which Responses shares. The stream is ``responses_stream.ResponsesAnswer``;
the items and the envelope it sends are built here, so both agree.

Stateless: ``previous_response_id`` and ``store`` mean nothing here; the caller refuses the
first where the engine does not speak Responses itself.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson

Problem = tuple[str, str]  # what is wrong, and the field at fault

# What the Responses API itself defines: read here, or of no use to an engine (an engine's
# own parameters, anything else, pass through).
_RESPONSES_KEYS = frozenset(("model", "input", "instructions", "max_output_tokens",
    "temperature", "top_p", "stream", "stream_options", "tools", "tool_choice",
    "parallel_tool_calls", "text", "reasoning", "previous_response_id", "store", "metadata",
    "include", "truncation", "user", "service_tier", "background", "background_options",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "safety_identifier",
    "max_tool_calls", "top_logprobs", "access_programs", "context_management", "image",
    "moderation", "conversation", "prompt"))  # fmt: skip
# Kept by OpenAI between requests: nothing here can stand in for them.
_STORED = {"conversation": "a conversation", "prompt": "a stored prompt"}
_ROLES = ("user", "assistant", "system", "developer")
# The codes a ``response.error`` may carry (the SDK checks); any other failure is a server's.
_ERROR_CODES = frozenset(("server_error", "rate_limit_exceeded", "invalid_prompt"))
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
    403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error",
    503: "service_unavailable", 504: "timeout_error"}  # fmt: skip
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(6).hex()}{next(_ids):06d}"


# -- the request ------------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any] | Problem:
    """The Chat Completions body for a Responses ``body``, or the problem with it. The
    built-in tools it leaves out are ``declined_tools(body)``."""
    for key, what in _STORED.items():
        if body.get(key) is not None:
            return f"`{key}` needs {what} kept by the server: send the whole `input`", key
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        return "`instructions` must be a string", "instructions"
    turned = _input(body.get("input"))
    if isinstance(turned, tuple):
        return turned
    messages += turned
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    limit = body.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            return "`max_output_tokens` must be a whole number of at least 1", "max_output_tokens"
        chat["max_tokens"] = limit
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the usage response.completed needs
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if isinstance(tools, tuple):
        return tools
    chat.update(tools)
    text = _text(body.get("text"))
    if isinstance(text, tuple):
        return text
    chat.update(text)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        if isinstance(reasoning.get("effort"), str):
            chat["reasoning_effort"] = reasoning["effort"]
    elif reasoning is not None:
        return "`reasoning` must be an object: {effort, summary}", "reasoning"
    for key, value in body.items():  # an engine's own parameters pass (llama.cpp's, ...)
        if key not in _RESPONSES_KEYS:
            chat.setdefault(key, value)
    return chat


def declined_tools(body: dict[str, Any]) -> list[str]:
    """The types of the tools in ``body`` that are not functions (web_search, mcp, custom,
    ...), once each in order: ``to_chat`` leaves them out rather than fail the request (as
    openai/codex#10635 asks), and the caller can say so."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    kinds = [t.get("type") for t in tools if isinstance(t, dict)]
    return list(dict.fromkeys(k for k in kinds if isinstance(k, str) and k != "function"))


def _input(given: Any) -> list[dict[str, Any]] | Problem:
    if isinstance(given, str) and given:
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        return "`input` is required: a string or a list of items", "input"
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        where = f"input.{i}"
        if not isinstance(item, dict):
            return f"`{where}` must be an object", where
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            turned = _message(item, where)
            if isinstance(turned, tuple):
                return turned
            messages += turned
        elif kind == "function_call":
            call = _call(item, where)
            if isinstance(call, tuple):
                return call
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the same turn: one message
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not item["call_id"]:
                return "a function_call_output needs the `call_id` it answers", f"{where}.call_id"
            text = _output_text(item.get("output"))
            if text is None:
                why = "a function_call_output's `output` must be a string or a list of parts"
                return why, f"{where}.output"
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # an earlier turn's reasoning: not sent back to the engine
        else:
            return f"an input item of type {kind!r} is not supported here", f"{where}.type"
    return messages


def _message(item: dict[str, Any], where: str) -> list[dict[str, Any]] | Problem:
    role, content = item.get("role"), item.get("content")
    if role not in _ROLES:
        return f"`{where}.role` must be one of: {', '.join(_ROLES)}", f"{where}.role"
    chat_role = "system" if role == "developer" else role  # what chat templates know
    if isinstance(content, str):
        return [{"role": chat_role, "content": content}]
    if not isinstance(content, list):
        return f"`{where}.content` must be a string or a list of parts", f"{where}.content"
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content.{j}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and role == "user":
            if part.get("file_id") is not None and part.get("image_url") is None:
                why = "files are not kept here: send the image as `image_url` (a URL or data: URL)"
                return why, f"{at}.file_id"
            if not isinstance(part.get("image_url"), str):
                return "an input_image needs `image_url`: a URL or a data: URL", f"{at}.image_url"
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            return f"a {kind!r} part is not supported in a {role} message here", f"{at}.type"
    if not parts:
        return []
    if all(p["type"] == "text" for p in parts):
        return [{"role": chat_role, "content": "".join(p["text"] for p in parts)}]
    return [{"role": chat_role, "content": parts}]


def _call(item: dict[str, Any], where: str) -> dict[str, Any] | Problem:
    for key in ("call_id", "name"):
        if not isinstance(item.get(key), str) or not item[key]:
            return f"a function_call needs `{key}`", f"{where}.{key}"
    arguments = item.get("arguments", "")
    if isinstance(arguments, dict):
        arguments = orjson.dumps(arguments).decode()
    if not isinstance(arguments, str):
        return "a function_call's `arguments` must be a JSON string", f"{where}.arguments"
    function = {"name": item["name"], "arguments": arguments or "{}"}
    return {"id": item["call_id"], "type": "function", "function": function}


def _output_text(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # its text parts (an image or a file in an output is dropped)
        texts = [p.get("text") for p in output if isinstance(p, dict) and "text" in p]
        return "\n".join(t for t in texts if isinstance(t, str))
    return None


def _tools(tools: Any, choice: Any) -> dict[str, Any] | Problem:
    out: dict[str, Any] = {}
    functions = []
    if tools is not None:
        if not isinstance(tools, list):
            return "`tools` must be a list", "tools"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                return "each tool needs a `type`", f"tools.{i}.type"
            if tool["type"] != "function":
                continue  # a built-in tool: declined (declined_tools), the request goes on
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                return "a function tool needs a `name`", f"tools.{i}.name"
            function: dict[str, Any] = {"name": tool["name"]}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
            if isinstance(tool.get("strict"), bool):
                function["strict"] = tool["strict"]
            functions.append({"type": "function", "function": function})
    if functions:
        out["tools"] = functions
    if choice is None:
        return out
    if choice in ("auto", "none", "required"):
        chat_choice: Any = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            return "a `tool_choice` of type function needs `name`", "tool_choice.name"
        chat_choice = {"type": "function", "function": {"name": choice["name"]}}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        return "`tool_choice` {type: allowed_tools} is not supported here", "tool_choice"
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        return out  # a built-in tool's: declined with the tool
    else:
        why = "`tool_choice` must be auto, none, required or {type: function, name}"
        return why, "tool_choice"
    if functions:  # with no tools sent an engine refuses any choice
        out["tool_choice"] = chat_choice
    return out


def _text(text: Any) -> dict[str, Any] | Problem:
    if text is None:
        return {}
    if not isinstance(text, dict):
        return "`text` must be an object: {format}", "text"
    form = text.get("format")
    kind = form.get("type") if isinstance(form, dict) else None
    if form is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        assert isinstance(form, dict)
        if not isinstance(form.get("name"), str) or not isinstance(form.get("schema"), dict):
            return "a json_schema format needs `name` and `schema`", "text.format"
        schema = {"name": form["name"], "schema": form["schema"]}
        for key in ("strict", "description"):
            if form.get(key) is not None:
                schema[key] = form[key]
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    return "`text.format` must be {type: text}, {type: json_object} or json_schema", "text.format"


# -- the answer -------------------------------------------------------------------------------


def response(
    answer: dict[str, Any], model: str, asked: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Responses ``response`` object for a Chat Completions ``answer`` to the Responses
    request ``asked`` (whose settings it echoes, as OpenAI's does)."""
    choice = (answer.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    thought = reasoning_of(said)
    if thought:
        output.append(reasoning_item(new_id("rs"), thought))
    if isinstance(said.get("content"), str) and said["content"]:
        output.append(message_item(new_id("msg"), said["content"]))
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments or {}).decode()
        call_id = call.get("id") or new_id("call")
        output.append(call_item(new_id("fc"), call_id, function.get("name", ""), arguments))
    created = answer.get("created")
    return envelope(
        new_id("resp"),
        model,
        asked,
        created if isinstance(created, int) else int(time.time()),
        finish=choice.get("finish_reason") or "stop",
        output=output,
        usage=usage_of(answer.get("usage")),
    )


def reasoning_of(said: dict[str, Any]) -> str:
    """The reasoning in a chat message or delta (``reasoning`` is vLLM's newer name)."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(said.get(key), str) and said[key]:
            return str(said[key])
    return ""


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": summary, "status": status}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [text_part(text)] if status != "in_progress" else [],
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def usage_of(chat_usage: Any) -> dict[str, Any]:
    """Responses usage for a Chat Completions ``usage`` (zeros where there was none)."""
    chat_usage = chat_usage if isinstance(chat_usage, dict) else {}
    given = chat_usage.get("prompt_tokens") or 0
    made = chat_usage.get("completion_tokens") or 0
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    thought = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": given,
        # cache_write_tokens: the SDK (3.x) requires it; no engine here reports it
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": made,
        "output_tokens_details": {"reasoning_tokens": thought},
        "total_tokens": chat_usage.get("total_tokens") or given + made,
    }


def envelope(
    response_id: str,
    model: str,
    asked: dict[str, Any] | None,
    created_at: int,
    *,
    finish: str | None = None,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    failed: str | None = None,
    code: str = "server_error",
) -> dict[str, Any]:
    """A ``response`` object: in progress (no ``finish``), completed, incomplete (``finish``
    length or content_filter) or failed (``failed``, the message)."""
    asked = asked or {}
    status, incomplete, error = "in_progress", None, None
    if failed is not None:
        code = code if code in _ERROR_CODES else "server_error"
        status, error = "failed", {"code": code, "message": failed}
    elif finish in ("length", "content_filter"):
        reason = "max_output_tokens" if finish == "length" else "content_filter"
        status, incomplete = "incomplete", {"reason": reason}
    elif finish is not None:
        status = "completed"
    text: Any = asked.get("text")
    text = text if isinstance(text, dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output or [],
        "usage": usage,
        "instructions": asked.get("instructions"),
        "max_output_tokens": asked.get("max_output_tokens"),
        "metadata": asked.get("metadata") or {},
        "parallel_tool_calls": asked.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": asked.get("reasoning") if isinstance(asked.get("reasoning"), dict) else None,
        "temperature": asked.get("temperature"),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": asked.get("tool_choice") or "auto",
        "tools": asked.get("tools") if isinstance(asked.get("tools"), list) else [],
        "top_p": asked.get("top_p"),
        "truncation": "disabled",
        "store": False,  # nothing is kept here: a later previous_response_id cannot find it
    }


def error_body(status: int, body: bytes) -> dict[str, Any]:
    """An error answer in OpenAI's shape (``{"error": {...}}``), which Responses shares: an
    answer already in it as it is, anything else made so."""
    try:
        said = orjson.loads(body)
    except orjson.JSONDecodeError:
        said = None
    if isinstance(said, dict) and isinstance(said.get("error"), dict):
        return said
    if isinstance(said, dict) and isinstance(said.get("message"), str):  # an error, unwrapped
        message = said["message"]
    else:
        message = body[:500].decode("utf-8", "replace")
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
