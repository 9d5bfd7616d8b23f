"""Ollama's API in OpenAI terms (pure: no I/O): the requests, and model names.

``chat_request`` (``/api/chat`` → Chat Completions), ``generate_request`` (``/api/generate``
→ ``(path, body)``), ``embed_request`` (``/api/embed``, legacy ``/api/embeddings``),
``keep_alive_seconds``: each says what is wrong, and where, as a ``Problem``. ``untag``
(and ``tag_name``): Ollama's names for the configured ones. The answers, streamed or
whole, and the listings' bodies are ``ollama_stream``'s, importable from here too.

Load-only calls (Ollama loads the model and answers ``done_reason`` "load", or "unload"
when ``keep_alive`` is 0), which the engine is not asked: ``generate_request`` gives
``(None, {"model"})`` for an empty prompt; ``chat_request`` a body with ``messages == []``;
``embed_request`` one with ``input == []``. ``load_answer`` and ``embed_answer`` answer.

Not carried: ``options.num_ctx`` (the gateway sizes the window; the caller may read it),
``template`` (the engine applies its own), ``context`` (the old token context), ``logprobs``,
options an OpenAI endpoint does not take (mirostat, repeat_last_n, num_gpu, ...).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Collection
from typing import Any

import orjson

# The answers, importable from here too.
from modelyard.ollama_stream import CAPABILITIES as CAPABILITIES
from modelyard.ollama_stream import ChatAnswer as ChatAnswer
from modelyard.ollama_stream import GenerateAnswer as GenerateAnswer
from modelyard.ollama_stream import embed_answer as embed_answer
from modelyard.ollama_stream import model_entry as model_entry
from modelyard.ollama_stream import ps_entry as ps_entry
from modelyard.ollama_stream import rfc3339
from modelyard.ollama_stream import show_body as show_body
from modelyard.ollama_stream import tag_name as tag_name

Problem = tuple[str, str]  # what is wrong, and the field at fault

# Ollama's options that llama-server's OpenAI endpoints take, by the same names.
_FLOATS = frozenset(("temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                     "presence_penalty", "frequency_penalty"))  # fmt: skip
_INTS = frozenset(("top_k", "seed"))
_THINK_LEVELS = ("low", "medium", "high")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}  # fmt: skip
_PART = r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"[-+]?(?:{_PART})+")  # Go's time.ParseDuration
_SECONDS = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")  # a bare number: seconds, as Ollama takes it
_IMAGE_TYPES = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"),
                ("UklGR", "image/webp"), ("Qk", "image/bmp"))  # fmt: skip


# -- requests ---------------------------------------------------------------------------------


def keep_alive_seconds(value: Any) -> float | Problem | None:
    """Ollama's ``keep_alive`` in seconds: a number of seconds or a Go duration ("5m",
    "1h30m", "300s"); any negative is forever (``math.inf``), 0 unloads now; ``None``
    when absent."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds: float | None = float(value)
    elif isinstance(value, str):
        seconds = _duration(value.strip())
    else:
        seconds = None
    if seconds is None or math.isnan(seconds):
        why = "`keep_alive` must be a number of seconds or a duration like 5m or 1h30m"
        return why, "keep_alive"
    return math.inf if seconds < 0 else seconds


def _duration(text: str) -> float | None:
    if _SECONDS.fullmatch(text):
        return float(text)
    if not _DURATION.fullmatch(text):
        return None
    seconds = sum(float(n) * _UNITS[unit] for n, unit in re.findall(_PART, text))
    return -seconds if text.startswith("-") else seconds


def chat_request(body: Any) -> dict[str, Any] | Problem:
    """The Chat Completions body for an ``/api/chat`` ``body``, or the problem with it."""
    model = _model(body)
    if isinstance(model, tuple):
        return model
    messages = _messages(body.get("messages"))
    if isinstance(messages, tuple):
        return messages
    chat: dict[str, Any] = {"model": model, "messages": messages}
    tools = _tools(body.get("tools"))
    if isinstance(tools, tuple):
        return tools
    if tools:
        chat["tools"] = tools
    common = _common(body, "chat")
    return common if isinstance(common, tuple) else {**chat, **common}


def generate_request(body: Any) -> tuple[str | None, dict[str, Any]] | Problem:
    """Where an ``/api/generate`` ``body`` goes and what is sent, or the problem with it.

    ``("/chat/completions", chat)`` as a rule; ``("/completions", {prompt, ...})`` when
    ``raw`` (no template); ``("/infill", {input_prefix, input_suffix, n_predict, ...})``
    when a ``suffix`` is given (llama-server's native fill-in-the-middle: its answer is
    ``{"content", "stop", ...}``, streamed or whole); ``(None, {"model"})`` for an empty
    prompt: Ollama's load-only call."""
    model = _model(body)
    if isinstance(model, tuple):
        return model
    text: dict[str, str] = {}
    for key in ("prompt", "suffix", "system"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            return f"`{key}` must be a string", key
        text[key] = value or ""
    raw = body.get("raw")
    if raw is not None and not isinstance(raw, bool):
        return "`raw` must be true or false", "raw"
    images = _images(body.get("images"), "images")
    if isinstance(images, tuple):
        return images
    if not text["prompt"]:
        ok = keep_alive_seconds(body.get("keep_alive"))  # still checked: it may unload
        return ok if isinstance(ok, tuple) else (None, {"model": model})
    if (text["suffix"] or raw) and images:
        return "images need the model's template: not with `raw` or `suffix`", "images"
    if text["suffix"]:
        path, kind = "/infill", "infill"
        out: dict[str, Any] = {"model": model, "input_prefix": text["prompt"]}
        out["input_suffix"] = text["suffix"]
    elif raw:
        if text["system"]:  # as Ollama: raw means no template to put a system prompt in
            return "raw mode does not support `system`", "system"
        path, kind, out = "/completions", "completions", {"model": model, "prompt": text["prompt"]}
    else:
        path, kind = "/chat/completions", "chat"
        system = [{"role": "system", "content": text["system"]}] if text["system"] else []
        messages: list[dict[str, Any]] = [*system]
        messages.append({"role": "user", "content": _content(text["prompt"], images)})
        out = {"model": model, "messages": messages}
    common = _common(body, kind)
    return common if isinstance(common, tuple) else (path, {**out, **common})


def embed_request(body: Any, *, legacy: bool = False) -> dict[str, Any] | Problem:
    """The OpenAI embeddings body for an ``/api/embed`` ``body`` (``input``: a string or a
    list of them; ``dimensions``; ``truncate``, which has no OpenAI counterpart and is only
    checked), or for the legacy ``/api/embeddings`` one (``prompt``) when ``legacy``."""
    model = _model(body)
    if isinstance(model, tuple):
        return model
    ok = keep_alive_seconds(body.get("keep_alive"))
    if isinstance(ok, tuple):
        return ok
    key = "prompt" if legacy else "input"
    given = body.get(key)
    if given is None or isinstance(given, str):
        inputs = [given] if given else []  # empty: load only, as Ollama does
    elif not legacy and isinstance(given, list) and all(isinstance(s, str) for s in given):
        inputs = given
    else:
        return f"`{key}` must be a string" + ("" if legacy else " or a list of strings"), key
    if not isinstance(body.get("truncate", True), bool):
        return "`truncate` must be true or false", "truncate"
    out: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if type(dimensions) is not int or dimensions < 1:
            return "`dimensions` must be a whole number of at least 1", "dimensions"
        out["dimensions"] = dimensions
    return out


def load_answer(
    model: str, *, chat: bool, unload: bool = False, now: float | None = None
) -> dict[str, Any]:
    """The answer to a load-only call (``unload``: keep_alive was 0)."""
    said = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    created = rfc3339(time.time() if now is None else now)
    reason = "unload" if unload else "load"
    return {"model": model, "created_at": created, **said, "done": True, "done_reason": reason}


def _model(body: Any) -> str | Problem:
    if not isinstance(body, dict):
        return "the body must be a JSON object", "body"
    model = body.get("model")
    return model if isinstance(model, str) and model else ("`model` is required", "model")


def _common(body: dict[str, Any], kind: str) -> dict[str, Any] | Problem:
    """stream, options, format and think: what every generating request shares. ``kind``:
    "chat", "completions" or "infill" (llama-server's native parameters)."""
    ok = keep_alive_seconds(body.get("keep_alive"))
    if isinstance(ok, tuple):
        return ok
    out: dict[str, Any] = {}
    stream = body.get("stream")
    if stream is None or stream is True:  # Ollama streams unless told not to
        out["stream"] = True
        if kind != "infill":  # the counts of the last line come with the usage chunk
            out["stream_options"] = {"include_usage": True}
    elif stream is not False:
        return "`stream` must be true or false", "stream"
    options = _options(body.get("options"), "n_predict" if kind == "infill" else "max_tokens")
    if isinstance(options, tuple):
        return options
    out.update(options)
    fmt = _format(body.get("format"), native=kind != "chat")
    if isinstance(fmt, tuple):
        return fmt
    out.update(fmt)
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in _THINK_LEVELS:
        return "`think` must be true, false, or one of low, medium, high", "think"
    if kind == "chat" and think is not None:  # without a template there is nothing to switch
        out["chat_template_kwargs"] = {"enable_thinking": think is not False}
        if isinstance(think, str):
            out["reasoning_effort"] = think
    return out


def _options(options: Any, limit: str) -> dict[str, Any] | Problem:
    if options is None:
        return {}
    if not isinstance(options, dict):
        return "`options` must be an object", "options"
    out: dict[str, Any] = {}
    for key, value in options.items():
        at = f"options.{key}"
        if value is None:
            continue
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _FLOATS or key in _INTS or key == "num_predict":
            if not is_number:
                return f"`{at}` must be a number", at
            if key in _FLOATS:
                out[key] = value
            elif key in _INTS:
                out[key] = int(value)
            elif value > 0:  # -1 (no limit), -2 (fill the window), 0 (Ollama: no limit)
                out[limit] = int(value)
        elif key == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                return f"`{at}` must be a list of strings", at
            out["stop"] = stops
    return out


def _format(value: Any, native: bool) -> dict[str, Any] | Problem:
    """``format``: "json" or a JSON schema. llama-server's /completions and /infill take
    the schema as ``json_schema`` (``{}``: any object), not ``response_format``."""
    if value is None or value == "":
        return {}
    if value == "json":
        return {"json_schema": {}} if native else {"response_format": {"type": "json_object"}}
    if isinstance(value, dict):
        if native:
            return {"json_schema": value}
        schema = {"name": "schema", "schema": value}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    return '`format` must be "json" or a JSON schema object', "format"


def _messages(given: Any) -> list[dict[str, Any]] | Problem:
    """Ollama's messages as OpenAI's (the call ids: ``_CallIds``)."""
    if given is None:
        return []
    if not isinstance(given, list):
        return "`messages` must be a list of {role, content} objects", "messages"
    out: list[dict[str, Any]] = []
    ids = _CallIds()
    for i, message in enumerate(given):
        at = f"messages.{i}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return f"`{at}.role` must be system, user, assistant or tool", f"{at}.role"
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return f"`{at}.content` must be a string", f"{at}.content"
        images = _images(message.get("images"), f"{at}.images")
        if isinstance(images, tuple):
            return images
        if images and role != "user":
            return "images go in user messages", f"{at}.images"
        if role == "assistant":
            turn = _assistant(message, content or "", at, ids)
            if isinstance(turn, tuple):
                return turn
            out.append(turn)
        elif role == "tool":
            name = message.get("tool_name", message.get("name"))
            name = name if isinstance(name, str) and name else None
            call_id = ids.answer(message.get("tool_call_id"), name)
            result = {"role": "tool", "tool_call_id": call_id, "content": content or ""}
            out.append({**result, "name": name} if name else result)  # templates may show it
        else:
            out.append({"role": role, "content": _content(content or "", images)})
    return out


def _assistant(
    message: dict[str, Any], content: str, at: str, ids: _CallIds
) -> dict[str, Any] | Problem:
    turn: dict[str, Any] = {"role": "assistant", "content": content}
    if isinstance(message.get("thinking"), str) and message["thinking"]:
        turn["reasoning_content"] = message["thinking"]  # for templates that show it
    calls = message.get("tool_calls")
    calls = [] if calls is None else calls
    if not isinstance(calls, list):
        return f"`{at}.tool_calls` must be a list", f"{at}.tool_calls"
    if calls:
        ids.unanswered, turn["content"], turn["tool_calls"] = [], content or None, []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return "a tool call needs `function.name`", f"{at}.tool_calls.{j}"
        said = function.get("arguments")
        text = said if isinstance(said, str) else orjson.dumps(said or {}).decode()
        turn["tool_calls"].append(
            {"id": ids.new(call.get("id"), function["name"]), "type": "function",
             "function": {"name": function["name"], "arguments": text}}
        )  # fmt: skip
    return turn


class _CallIds:
    """Ollama's tool calls have no id (newer clients send ``id`` and ``tool_call_id``: used
    when present). Each call gets ``call_<n>``, n counting the request's calls; a tool
    result answers the first unanswered call of the last assistant turn with its
    ``tool_name``, else the first unanswered one, else a call of its own."""

    def __init__(self) -> None:
        self.made = 0
        self.unanswered: list[tuple[str, str]] = []  # the last assistant turn's: id, name

    def _next(self) -> str:
        self.made += 1
        return f"call_{self.made - 1}"

    def new(self, given: Any, name: str) -> str:
        call_id = given if isinstance(given, str) and given else self._next()
        self.unanswered.append((call_id, name))
        return call_id

    def answer(self, given: Any, name: str | None) -> str:
        if isinstance(given, str) and given:
            self.unanswered = [c for c in self.unanswered if c[0] != given]
            return given
        for k, (call_id, called) in enumerate(self.unanswered):
            if called == name:
                del self.unanswered[k]
                return call_id
        return self.unanswered.pop(0)[0] if self.unanswered else self._next()


def _images(value: Any, at: str) -> list[str] | Problem:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return f"`{at}` must be a list of base64 strings", at
    return value


def _content(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [  # images first, as Ollama puts them before the text
        {"type": "image_url", "image_url": {"url": _data_url(image)}} for image in images
    ]
    return [*parts, {"type": "text", "text": text}] if text else parts


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    kind = next((t for magic, t in _IMAGE_TYPES if image.startswith(magic)), "image/png")
    return f"data:{kind};base64,{image}"


def _tools(value: Any) -> list[dict[str, Any]] | Problem:
    """Ollama's tools are OpenAI's function tools already: checked, and passed."""
    if value is None:
        return []
    if not isinstance(value, list):
        return "`tools` must be a list", "tools"
    out = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return "each tool needs `function.name`", f"tools.{i}.function.name"
        if tool.get("type", "function") != "function":
            return "only function tools are supported", f"tools.{i}.type"
        kept = {k: v for k, v in function.items() if v is not None}
        out.append({"type": "function", "function": kept})
    return out


# -- names ------------------------------------------------------------------------------------


def untag(name: str, known: Collection[str]) -> str | None:
    """The configured name an Ollama client means by ``name`` (``gemma-a``,
    ``gemma-a:latest``, or an exact name with its tag), or None."""
    if name in known:
        return name
    if name.endswith(":latest") and name.removesuffix(":latest") in known:
        return name.removesuffix(":latest")
    tagged = tag_name(name)
    return tagged if tagged != name and tagged in known else None
