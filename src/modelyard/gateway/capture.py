"""Chat answers kept in the console's conversations as they are relayed.

A ``POST /v1/chat/completions`` with ``x-modelyard-conversation: ID`` (a conversation of
the request's key; else a 404 before anything runs) is kept in that conversation: the
request's last user message first (unless it is the conversation's last message already),
then the answer, read from the server-sent events on their way to the client (or from the
JSON of an answer not streamed) and saved however the stream ends: ``complete``,
``stopped`` (the client went away: what it was sent is kept), ``cut`` (the upstream failed
mid-way, or ended early) or ``error`` (refused, or failed before any text). The model,
node and decision come from the answer's ``x-modelyard-*`` headers, or from the keep-alive
comment that names them when the stream began while the model loaded.

Requests without the header take none of this path (the OpenAI front-end looks at the
headers only).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Coroutine
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Scope

from modelyard.config import ApiKey
from modelyard.conversations import ID, Answer, Conversations, Rejected
from modelyard.gateway.connection import head_value
from modelyard.gateway.conversations_api import not_found
from modelyard.gateway.errors import openai_error
from modelyard.gateway.proxy import ProxyStream
from modelyard.gateway.state import Gateway

HEADER = b"x-modelyard-conversation"


def conversation_of(scope: Scope) -> str | None:
    """The ``x-modelyard-conversation`` header's value, if the request has one."""
    value = head_value(scope, HEADER)
    return value.decode("latin-1") if value is not None else None


def last_user_text(raw: bytes) -> str | None:
    """The text of the body's last user message (its text parts, joined), if any."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    listed = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(listed if isinstance(listed, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                parts = [p.get("text") for p in content if isinstance(p, dict)]
                return "\n".join(p for p in parts if isinstance(p, str))
            return None
    return None


async def capture(
    gw: Gateway,
    scope: Scope,
    conversation: str,
    raw: bytes,
    began: float,
    serve: Coroutine[Any, Any, Response],
) -> Response:
    """``serve``'s answer, kept in ``conversation`` as it goes; a 404 before anything runs
    if the request's key has no such conversation."""
    key: ApiKey | None = scope.get("state", {}).get("api_key")
    owner = key.name if key is not None else ""
    store = gw.conversations
    try:
        known = ID.fullmatch(conversation) is not None and await store.begin(
            owner, conversation, last_user_text(raw)
        )
    except Rejected as exc:
        serve.close()
        return openai_error(exc.refusal)
    except BaseException:
        serve.close()
        raise
    if not known:
        serve.close()
        return not_found(conversation)
    recorder = Recorder(store, conversation, began, gw.config.access.max_body)
    try:
        answer = await serve
    except asyncio.CancelledError:
        recorder.end("stopped", "the client went away before the answer came")
        raise
    except Exception as exc:
        recorder.end("error", f"the gateway failed on this request: {exc}")
        raise
    recorder.headers(answer)
    if isinstance(answer, ProxyStream):
        answer.body_iterator = Captured(answer.body_iterator, recorder)
    else:
        recorder.whole(answer.status_code, bytes(answer.body))
    return answer


class Recorder:
    """An answer as it is relayed: its text and reasoning, counts and times, how it ended."""

    def __init__(self, store: Conversations, conversation: str, began: float, bound: int) -> None:
        self.store, self.conversation, self.began, self.bound = store, conversation, began, bound
        self.answer = Answer()
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.size = 0  # characters kept so far: past ``bound`` nothing more is
        self.first: float | None = None  # monotonic: the first token
        self.latest: float | None = None  # monotonic: the latest token
        self.deltas = 0  # events that carried text: the token count if no usage comes
        self.finished = False  # [DONE] or a finish_reason came
        self.done = False  # [DONE] came: the answer is whole
        self.saved = False
        self._tail = b""

    def headers(self, response: Response) -> None:
        h = response.headers
        a = self.answer
        a.model, a.node = h.get("x-modelyard-model"), h.get("x-modelyard-node")
        a.decision = h.get("x-modelyard-decision")

    def feed(self, chunk: bytes) -> None:
        """Read a relayed chunk of server-sent events, lines cut anywhere."""
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        for line in data[:cut].split(b"\n"):
            if line.startswith(b"data:"):
                self._event(line[5:].strip())
            elif line.startswith(b": modelyard: model="):  # keep-alive's late headers
                for pair in line[12:].decode("utf-8", "replace").split():
                    name, _, value = pair.partition("=")
                    if name in ("model", "node"):
                        setattr(self.answer, name, value)

    def _event(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self.finished = self.done = True
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        error = event.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            self.answer.error = str(message)[:2000]
            return
        self._counts(event)
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        if choices[0].get("finish_reason") is not None:
            self.finished = True
        delta = choices[0].get("delta")
        if isinstance(delta, dict):
            self._text(delta.get("content"), delta.get("reasoning_content"))

    def _text(self, content: object, reasoning: object) -> None:
        said = False
        for text, into in ((content, self.content), (reasoning, self.reasoning)):
            if isinstance(text, str) and text:
                said = True
                if self.size < self.bound:
                    into.append(text)
                    self.size += len(text)
        if said:
            self.deltas += 1
            self.latest = time.monotonic()
            if self.first is None:
                self.first = self.latest

    def _counts(self, event: dict[str, Any]) -> None:
        usage, timings = event.get("usage"), event.get("timings")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.answer.tokens_out = usage["completion_tokens"]
        elif isinstance(timings, dict) and isinstance(timings.get("predicted_n"), int):
            self.answer.tokens_out = timings["predicted_n"]
        speed = timings.get("predicted_per_second") if isinstance(timings, dict) else None
        if isinstance(speed, int | float) and speed > 0:  # the server's own measure
            self.answer.tokens_per_s = round(float(speed), 2)

    def whole(self, status: int, body: bytes) -> None:
        """A non-streamed answer (or a refusal), read from its JSON."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        data = data if isinstance(data, dict) else {}
        if status >= 400 or "error" in data:
            error = data.get("error")
            said = error.get("message") if isinstance(error, dict) else error
            self.end("error", str(said or f"HTTP {status}")[:2000])
            return
        self._counts(data)
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            message = choices[0].get("message")
            if isinstance(message, dict):
                self._text(message.get("content"), message.get("reasoning_content"))
        self.first = None  # not streamed: no first token to time
        self.finished = True
        self.end()

    def end(self, status: str | None = None, error: str | None = None, ended: bool = False) -> None:
        """Save the answer (once): ``status`` as given, else as the stream ended (``ended``:
        the server ended it; else the client went away)."""
        if self.saved:
            return
        self.saved = True
        a = self.answer
        if self._tail:
            self.feed(b"\n")
        a.error = a.error or error
        if status is None:
            if ended and a.error is None and not self.finished:
                a.error = "the server ended the stream before the answer's end"
            if a.error is not None:
                status = "cut" if self.deltas else "error"
            else:
                status = "complete" if self.finished else "stopped"
        a.status = status
        a.content = "".join(self.content)
        a.reasoning = "".join(self.reasoning) if self.reasoning else None
        if a.tokens_out is None and self.deltas:
            a.tokens_out = self.deltas
        if self.first is not None:
            a.ttft_s = round(self.first - self.began, 4)
            spent = (self.latest or self.first) - self.first
            # Over less than 50 ms (chunks that came in one burst) a rate says nothing.
            if a.tokens_out and a.tokens_out > 1 and spent >= 0.05 and a.tokens_per_s is None:
                a.tokens_per_s = round((a.tokens_out - 1) / spent, 2)
        self.store.queue(self.store.save_answer, self.conversation, a)


class Captured:
    """A stream's chunks, read by the recorder on their way; the answer is saved when the
    stream ends or is closed, even unread: ``ProxyStream`` closes it in a ``finally``.

    An async generator by its methods (``ProxyStream`` closes those), not by inheritance.
    """

    def __init__(self, inner: AsyncIterable[str | bytes | memoryview], recorder: Recorder) -> None:
        self.inner: AsyncIterator[str | bytes | memoryview] = aiter(inner)
        self.recorder = recorder

    def __aiter__(self) -> Captured:
        return self

    async def __anext__(self) -> bytes:
        return await self.asend(None)

    async def asend(self, value: None) -> bytes:
        try:
            chunk = await anext(self.inner)
        except StopAsyncIteration:
            self.recorder.end(ended=True)  # complete, or cut by an error event or short
            raise
        except asyncio.CancelledError:
            raise  # the client went away: closing saves what it received
        except Exception as exc:
            self.recorder.end("cut", f"the stream failed: {exc}")
            raise
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        self.recorder.feed(data)
        if self.recorder.done:  # saved before the client sees the end, and may ask for it
            self.recorder.end()
        return data

    async def athrow(
        self, kind: type[BaseException], value: object = None, tb: object = None
    ) -> bytes:
        await self.aclose()
        raise value if isinstance(value, BaseException) else kind()

    async def aclose(self) -> None:
        try:
            self.recorder.end()  # the rows first: a cancel may land in the close below
        finally:
            if isinstance(self.inner, AsyncGenerator):
                await self.inner.aclose()
