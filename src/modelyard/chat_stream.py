"""Reading a Chat Completions stream fed in pieces, for the translations that turn it into
another protocol's answer (Anthropic Messages, OpenAI Responses, Ollama) (pure: no I/O).

A subclass says what each event becomes (``_chat_event``) and what the end does (``_done``);
this reads the ``data:`` lines whatever the chunks' edges, ignores comments and lines that
are not JSON objects, and stops reading once ``_ended`` is set (an error ended the answer).
"""

from __future__ import annotations

from typing import Any

import orjson


def error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body, or its first bytes as text."""
    try:
        said = orjson.loads(body)["error"]
        return str(said.get("message", said) if isinstance(said, dict) else said)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:500].decode("utf-8", "replace")


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object, or None when it is not one."""
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


class ChatEvents:
    """``feed`` the stream's chunks and ``end`` it; each event goes to ``_chat_event``."""

    def __init__(self) -> None:
        self._pending = b""
        self._ended = False

    def feed(self, chunk: bytes) -> bytes:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        return b"".join(self._line(line) for line in lines)

    def end(self) -> bytes:
        out = self._line(self._pending) if self._pending else b""
        self._pending = b""
        return out + self._done()

    def _line(self, line: bytes) -> bytes:
        line = line.strip()
        if self._ended or not line.startswith(b"data:"):
            return b""
        data = line[5:].strip()
        if data == b"[DONE]":
            return self._done()
        event = json_object(data)
        return self._chat_event(event) if event is not None else b""

    def _chat_event(self, event: dict[str, Any]) -> bytes:
        """What one event of the stream becomes."""
        raise NotImplementedError

    def _done(self) -> bytes:
        """What the end of the stream becomes (called once it is over, maybe twice)."""
        raise NotImplementedError
