"""Ollama's answers, made of OpenAI ones (pure: no I/O).

``ChatAnswer`` (``/api/chat``), ``GenerateAnswer`` (``/api/generate``): proxy
``Translation``s. An engine's stream (Chat Completions or Completions chunks, or
llama-server's native ``/infill`` lines ``{"content", "stop"}``) in, NDJSON out: one object
a line, the last with ``done: true``, ``done_reason``, the counts and the durations (ns).
An error event mid-stream ends it with ``{"error": ...}`` (the official client raises it).
Durations: llama-server's ``timings`` (``prompt_ms``, ``predicted_ms``) when it sends them;
the wall time measured here (construction, first chunk, last) fills the rest, the remainder
being ``load_duration`` (a model loading, a queue). Also ``embed_answer`` and the
listings' bodies (``model_entry``, ``ps_entry``, ``show_body``).
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import struct
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from modelyard.chat_stream import ChatEvents, error_message, json_object

Clock = Callable[[], float]
CAPABILITIES = ("completion", "tools", "vision", "insert", "thinking", "embedding")
FOREVER = "9999-12-31T23:59:59Z"  # an expiry that never comes (keep_alive < 0)


def rfc3339(seconds: float) -> str:
    """A time as Ollama writes one: UTC, RFC 3339 with microseconds and ``Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def arguments(value: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Ollama sends (OpenAI's are a JSON string)."""
    if isinstance(value, dict):
        return value
    try:
        found = orjson.loads(value or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw": value}  # the model wrote no JSON: the client sees what it wrote
    return found if isinstance(found, dict) else {"value": found}


def _said(error: Any) -> str:
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Answer(ChatEvents):
    """What ChatAnswer and GenerateAnswer share: reading the engine, timing, the last line."""

    takes_tools: ClassVar[bool] = False

    def __init__(
        self, model: str, stream: bool, *, clock: Clock = time.monotonic, now: Clock = time.time
    ) -> None:
        super().__init__()
        self.model = model
        self.stream = stream
        self.content_type = "application/x-ndjson" if stream else "application/json"
        self._clock, self._now = clock, now
        self._start = clock()
        self._first: float | None = None
        self._text: list[str] = []  # kept for an answer sent whole (stream false)
        self._thinking: list[str] = []
        self._calls: dict[Any, dict[str, str]] = {}  # the engine's call index → its pieces
        self._sent = 0  # calls already on a line, in order
        self._reason = "stop"
        self._usage: tuple[Any, Any] = (None, None)  # prompt, generated
        self._native: tuple[Any, Any] = (None, None)  # /infill's own counts
        self._timings: dict[str, Any] = {}

    def whole(self, body: bytes) -> bytes:
        answer = json_object(body)
        if answer is None:
            return body
        for choice in answer.get("choices") or []:  # a whole message reads as one delta
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                choice["delta"] = choice["message"]
        self._read(answer)  # a completion's choices and /infill's answer read as chunks do
        self._ended = True
        return self._dump(self._complete(self._clock()))

    def error(self, status: int, body: bytes) -> bytes:
        return orjson.dumps({"error": error_message(body)})

    def _body(self, text: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def _extra(self) -> dict[str, Any]:
        return {}

    # -- reading ------------------------------------------------------------------------------

    def _done(self) -> bytes:
        return self._finish()

    def _chat_event(self, event: dict[str, Any]) -> bytes:
        if self._first is None:
            self._first = self._clock()
        if "error" in event:  # the gateway's or the engine's error event: the answer ends
            self._ended = True
            return self._dump({"error": _said(event["error"])})
        return self._chunk(event)

    def _chunk(self, event: dict[str, Any]) -> bytes:
        said, thought, finished, last = self._read(event)
        calls = self._take(everything=finished) if self.stream else []  # else: all at the end
        out = b""
        if self.stream and (said or thought or calls):
            out = self._dump(self._stamp(self._body(said, thought, calls), done=False))
        return out + self._finish() if last else out  # /infill's last: no [DONE] follows

    def _read(self, event: dict[str, Any]) -> tuple[str, str, bool, bool]:
        """An event's text and thinking (kept), whether its choice finished, and whether it
        is llama-server's native last one (``stop: true``)."""
        self._counts(event)
        text, thinking, finished, last = [], [], False, False
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):  # Chat Completions
                text.append(delta.get("content"))
                thinking.append(delta.get("reasoning_content", delta.get("reasoning")))
                for call in delta.get("tool_calls") or []:
                    self._piece(call)
            else:  # Completions
                text.append(choice.get("text"))
            if choice.get("finish_reason"):
                self._ends(choice["finish_reason"])
                finished = True
        if "choices" not in event and isinstance(event.get("content"), str):  # /infill's
            text.append(event["content"])
            if event.get("stop") is True:
                self._ends(event.get("stop_type"))
                last = True
        said = "".join(t for t in text if isinstance(t, str))
        thought = "".join(t for t in thinking if isinstance(t, str))
        self._text += [said] if said else []
        self._thinking += [thought] if thought else []
        return said, thought, finished, last

    def _piece(self, call: Any) -> None:
        if not self.takes_tools or not isinstance(call, dict):
            return
        key = call.get("index")
        key = key if isinstance(key, int) else len(self._calls)  # no index: a whole call each
        slot = self._calls.setdefault(key, {"id": "", "name": "", "arguments": ""})
        if isinstance(call.get("id"), str) and call["id"]:
            slot["id"] = call["id"]
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if isinstance(function.get("name"), str) and not slot["name"]:
            slot["name"] = function["name"]  # once: some engines repeat it on every piece
        said = function.get("arguments")
        if isinstance(said, str):
            slot["arguments"] += said
        elif isinstance(said, dict):  # sent whole, as an object
            slot["arguments"] = orjson.dumps(said).decode()

    def _take(self, everything: bool) -> list[dict[str, Any]]:
        """The calls now complete, Ollama-shaped: Ollama sends a call whole, never in pieces.
        A call is complete once a later one starts, or the choice finished."""
        keys = list(self._calls)
        ready = keys[self._sent :] if everything else keys[self._sent : -1]
        out = []
        for position, key in enumerate(ready, start=self._sent):
            slot = self._calls[key]
            function = {"index": position, "name": slot["name"]}
            function["arguments"] = arguments(slot["arguments"])
            out.append({"id": slot["id"] or f"call_{os.urandom(6).hex()}", "function": function})
        self._sent += len(ready)
        return out

    def _counts(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if "tokens_evaluated" in event or "tokens_predicted" in event:
            self._native = (event.get("tokens_evaluated"), event.get("tokens_predicted"))
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]

    def _ends(self, reason: Any) -> None:  # OpenAI's finish_reason, llama-server's stop_type
        self._reason = "length" if reason in ("length", "limit") else "stop"  # tool_calls: stop

    # -- writing ------------------------------------------------------------------------------

    def _finish(self) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        end = self._clock()
        if not self.stream:
            return self._dump(self._complete(end))
        calls = self._take(everything=True)
        out = self._dump(self._stamp(self._body("", "", calls), done=False)) if calls else b""
        return out + self._dump(self._stamp(self._body("", "", []), done=True, end=end))

    def _complete(self, end: float) -> dict[str, Any]:
        """The whole answer, one object: all the text, thinking and calls, and the counts."""
        body = self._body("".join(self._text), "".join(self._thinking), self._take(True))
        return self._stamp(body, done=True, end=end)

    def _stamp(self, body: dict[str, Any], done: bool, end: float = 0.0) -> dict[str, Any]:
        out = {"model": self.model, "created_at": rfc3339(self._now()), **body, "done": done}
        if done:
            out["done_reason"] = self._reason
            out.update(self._extra())
            out.update(self._durations(end))
        return out

    def _durations(self, end: float) -> dict[str, int]:
        total = round((end - self._start) * 1e9)
        prompt_ms = _number(self._timings.get("prompt_ms"))
        predicted_ms = _number(self._timings.get("predicted_ms"))
        if prompt_ms is not None and predicted_ms is not None:
            prompt, generated = round(prompt_ms * 1e6), round(predicted_ms * 1e6)
            total = max(total, prompt + generated)
            load = total - prompt - generated
        else:  # measured: a whole answer (no first chunk) counts all as generation
            first = self._first if self._first is not None else self._start
            load, prompt = 0, round((first - self._start) * 1e9)
            generated = total - prompt
        timed = self._timings
        prompt_count = _first_known(self._usage[0], self._native[0], timed.get("prompt_n"))
        eval_count = _first_known(self._usage[1], self._native[1], timed.get("predicted_n"))
        return {
            "total_duration": total,
            "load_duration": load,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": prompt,
            "eval_count": eval_count,
            "eval_duration": generated,
        }

    def _dump(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj) + (b"\n" if self.stream else b"")  # NDJSON when streamed


def _first_known(*counts: Any) -> int:
    return next((c for c in map(_count, counts) if c is not None), 0)


class ChatAnswer(_Answer):
    """``/api/chat``'s answer: ``message`` with ``content``, ``thinking`` and whole
    ``tool_calls`` (each ``{id, function: {index, name, arguments: object}}``)."""

    takes_tools = True

    def _body(self, text: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return {"message": message}


class GenerateAnswer(_Answer):
    """``/api/generate``'s answer: ``response`` and ``thinking``; the last object has
    ``context: []`` (the old token context is not kept). Tool calls do not exist here."""

    def _body(self, text: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {"response": text, "thinking": thinking} if thinking else {"response": text}

    def _extra(self) -> dict[str, Any]:
        return {"context": []}


# -- answers ----------------------------------------------------------------------------------


def embed_answer(
    answer: dict[str, Any], model: str, legacy: bool, *, took: float = 0.0
) -> dict[str, Any]:
    """An OpenAI embeddings ``answer`` as ``/api/embed``'s (``took``: seconds, the total
    duration) or, ``legacy``, ``/api/embeddings``'s ``{"embedding"}`` (the first input's)."""
    rows = [d for d in answer.get("data") or [] if isinstance(d, dict)]
    rows.sort(key=lambda d: d.get("index", 0))
    vectors = [_vector(d.get("embedding")) for d in rows]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": round(took * 1e9),
        "load_duration": 0,
        "prompt_eval_count": usage.get("prompt_tokens") or 0,
    }


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):  # base64 little-endian float32, when an engine sends those
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4]))
    return [float(x) for x in value] if isinstance(value, list) else []


# -- listings ---------------------------------------------------------------------------------


def tag_name(name: str) -> str:
    """A model name as Ollama shows it: ``gemma-a`` → ``gemma-a:latest``; one with a tag
    (a colon after the last slash: a registry's port is no tag) unchanged."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _when(at: float | datetime) -> str:
    if isinstance(at, datetime):
        return rfc3339(at.timestamp())
    return FOREVER if math.isinf(at) else rfc3339(at)


def _details(family: str | None, size: str | None, quantization: str | None) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family or "",
        "families": [family] if family else None,
        "parameter_size": size or "",
        "quantization_level": quantization or "",
    }


def model_entry(name: str, size_bytes: int, modified_at: float | datetime, family: str | None,
                parameter_size: str | None, quantization: str | None,
                context_length: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One model of ``/api/tags`` (``modified_at``: epoch seconds or a datetime). The digest
    is a stable sha256 of the shown name: there is no blob to hash. ``context_length``, when
    given, is an extra that Ollama's own /api/tags does not send."""
    shown = tag_name(name)
    entry: dict[str, Any] = {
        "name": shown,
        "model": shown,
        "modified_at": _when(modified_at),
        "size": size_bytes,
        "digest": hashlib.sha256(shown.encode()).hexdigest(),
        "details": _details(family, parameter_size, quantization),
    }
    if context_length is not None:
        entry["context_length"] = context_length
    return entry


def ps_entry(name: str, size_bytes: int, size_vram: int, expires_at: float | datetime,
             family: str | None, parameter_size: str | None, quantization: str | None,
             context_length: int | None) -> dict[str, Any]:  # fmt: skip
    """One running model of ``/api/ps`` (``expires_at``: epoch seconds, ``math.inf`` when
    it stays loaded forever)."""
    entry = model_entry(name, size_bytes, 0.0, family, parameter_size, quantization)
    del entry["modified_at"]
    entry.update(expires_at=_when(expires_at), size_vram=size_vram)
    if context_length is not None:
        entry["context_length"] = context_length
    return entry


def show_body(name: str, family: str | None, parameter_size: str | None,
              quantization: str | None, context_length: int | None,
              capabilities: Collection[str], modified_at: float | datetime, *,
              template: str = "", parameters: Mapping[str, Any] | None = None,
              ) -> dict[str, Any]:  # fmt: skip
    """``/api/show``'s answer (``capabilities``: of ``CAPABILITIES``; ``parameters``: the
    defaults shown, num_ctx from ``context_length``), as Continue and Open WebUI read it."""
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"unknown capabilities: {sorted(unknown)}")
    shown = {**(parameters or {})}
    if context_length is not None:
        shown.setdefault("num_ctx", context_length)
    lines = [
        f"{key:<30} {orjson.dumps(v).decode() if isinstance(v, str) else v}"
        for key, value in shown.items()
        for v in (value if isinstance(value, list) else [value])  # stop: one line each
    ]
    arch = family or "unknown"
    info: dict[str, Any] = {"general.architecture": arch}
    if context_length is not None:
        info[f"{arch}.context_length"] = context_length
    modelfile = f"# Served by modelyard: no Modelfile made it\nFROM {tag_name(name)}\n"
    if template:
        modelfile += f'TEMPLATE """{template}"""\n'
    modelfile += "".join(f"PARAMETER {line}\n" for line in lines)
    return {
        "modelfile": modelfile,
        "parameters": "\n".join(lines),
        "template": template,
        "details": _details(family, parameter_size, quantization),
        "model_info": info,
        "capabilities": [c for c in CAPABILITIES if c in capabilities],
        "modified_at": _when(modified_at),
    }
