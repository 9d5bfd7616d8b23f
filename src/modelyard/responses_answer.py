"""A Chat Completions answer made an OpenAI Responses answer (pure: no I/O).

``response``: a whole Chat Completions answer → a Responses ``response`` object. The items
and the envelope the stream (``responses_stream.ResponsesAnswer``) sends are built here, so
both agree. ``error_body``: an error answer in OpenAI's shape, which Responses shares. The
request's side is ``responses_body``.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson

# The codes a ``response.error`` may carry (the SDK checks); any other failure is a server's.
_ERROR_CODES = frozenset(("server_error", "rate_limit_exceeded", "invalid_prompt"))
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
    403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error",
    503: "service_unavailable", 504: "timeout_error"}  # fmt: skip
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(6).hex()}{next(_ids):06d}"


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
