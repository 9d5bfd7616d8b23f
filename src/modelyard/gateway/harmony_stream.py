"""A Harmony model's chat answers, cleaned as they pass (``harmony: true`` in its config).

The proxy relays other answers byte for byte; for a model marked Harmony whose engine does
not parse the format, the answer's text carries the format's tags (``modelyard.harmony``).
:class:`HarmonyStream` is the proxy's rewriter for such a model's chat completions: each
event's ``choices[i].delta.content`` goes through one parser per choice, the answer's text
stays in ``content``, the chain of thought is added to ``reasoning_content`` (the field
llama-server and vLLM use), and the event is written again. An event the engine already
cleaned (no tag in it) passes untouched, byte for byte. An event left with nothing once
its tags are gone is dropped, unless it is the first, or ends a choice, or carries usage.
A JSON answer read whole has its ``choices[i].message.content`` cleaned the same way.

Text completions are not cleaned: their client wrote the prompt, Harmony header and all,
and parses the answer itself (the completions API has no field for reasoning).
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.harmony import Parser

_QUIET = frozenset({"content", "reasoning_content"})  # all an emptied event's delta may hold
_KEPT = ("id", "object", "created", "model", "system_fingerprint")  # for an event made here


class HarmonyStream:
    """Rewrites a chat answer's bytes: ``feed`` each chunk, ``end`` once, like ``Renamer``."""

    def __init__(self) -> None:
        self._tail = b""  # a line not yet ended
        self._whole: bool | None = None  # a JSON body rather than events; None: not yet seen
        self._parsers: dict[int, Parser] = {}  # by choice index, while the choice goes on
        self._events = 0
        self._drop_blank = False  # an event was dropped: the blank line that ends it goes too
        self._last: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk
        if self._whole is None:
            head = data.lstrip()
            if not head:
                self._tail = data
                return b""
            self._whole = head[:1] in (b"{", b"[")
        if self._whole:
            self._tail = data
            return b""
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        if not cut:
            return b""
        return b"".join([self._line(line) for line in data[:cut].splitlines(keepends=True)])

    def end(self) -> bytes:
        rest, self._tail = self._tail, b""
        if self._whole:
            return _clean_whole(rest)
        out = self._line(rest) if rest else b""
        return out + self._flush()

    def _line(self, line: bytes) -> bytes:
        body = line.rstrip(b"\r\n")
        if self._drop_blank:
            self._drop_blank = False
            if not body:
                return b""
        if not body.startswith(b"data:"):
            return line
        payload = body[5:].lstrip()
        if payload.startswith(b"[DONE]"):
            return self._flush() + line
        if b'"choices"' not in payload:
            return line
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return line
        if not isinstance(event, dict):
            return line
        first = self._events == 0
        self._events += 1
        self._last = event
        if not self._clean(event):
            return line
        if not first and _emptied(event):
            self._drop_blank = True
            return b""
        return b"data: " + orjson.dumps(event) + line[len(body) :]

    def _clean(self, event: dict[str, Any]) -> bool:
        """Cleans the event's choices in place; whether it changed."""
        choices = event.get("choices")
        if not isinstance(choices, list):
            return False
        changed = False
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict) or not isinstance(choice.get("delta"), dict):
                continue
            delta: dict[str, Any] = choice["delta"]
            index = choice.get("index", pos)
            index = index if isinstance(index, int) else pos
            text = delta.get("content")
            parser = self._parsers.get(index)
            if parser is None:
                if not isinstance(text, str):
                    continue
                parser = self._parsers[index] = Parser()
            answer, reasoning = parser.feed(text) if isinstance(text, str) else ("", "")
            if choice.get("finish_reason") is not None:
                rest, more = parser.end()
                answer, reasoning = answer + rest, reasoning + more
                del self._parsers[index]
            if not reasoning and (answer == text or (text is None and not answer)):
                continue  # as it came
            _put(delta, answer, reasoning)
            changed = True
        return changed

    def _flush(self) -> bytes:
        """An event for what the choices still held, when the answer ends without saying."""
        choices = []
        for index, parser in sorted(self._parsers.items()):
            answer, reasoning = parser.end()
            if answer or reasoning:
                delta: dict[str, Any] = {}
                _put(delta, answer, reasoning)
                choices.append({"index": index, "delta": delta, "finish_reason": None})
        self._parsers.clear()
        if not choices:
            return b""
        event = {k: self._last[k] for k in _KEPT if k in self._last}
        event["choices"] = choices
        return b"data: " + orjson.dumps(event) + b"\n\n"


def _put(message: dict[str, Any], answer: str, reasoning: str) -> None:
    """Its ``content`` becomes the answer; the reasoning goes after any it had."""
    if answer or isinstance(message.get("content"), str):
        message["content"] = answer
    if reasoning:
        had = message.get("reasoning_content")
        message["reasoning_content"] = (had if isinstance(had, str) else "") + reasoning


def _emptied(event: dict[str, Any]) -> bool:
    """Whether the event carries nothing: no text, no end, no usage, nothing else."""
    if event.get("usage") or "timings" in event:
        return False
    for choice in event["choices"]:
        if not isinstance(choice, dict):
            return False
        delta = choice.get("delta")
        if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
            return False
        if not isinstance(delta, dict) or not delta.keys() <= _QUIET or any(delta.values()):
            return False
    return True


def _clean_whole(body: bytes) -> bytes:
    """A chat completion read whole, its messages cleaned; as it came if none changed."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return body
    changed = False
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not isinstance(text, str):
            continue
        parser = Parser()
        visible, reasoning = parser.feed(text)
        rest, more = parser.end()
        visible, reasoning = visible + rest, reasoning + more
        if visible != text or reasoning:
            _put(message, visible, reasoning)
            changed = True
    return orjson.dumps(answer) if changed else body
