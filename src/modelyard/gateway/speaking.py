"""Speak while it thinks: a persona's reply streams as text and, sentence by sentence, as
audio, the first sentence spoken before the reply is over.

Two tasks and one line of events. The reader follows the persona's chat (streamed, through
the gateway's own request path) and cuts its text into sentences (``sentences.py``); the
speaker sends each sentence in order to the persona's voice as a speech request of its own
(WAV), so a serial GPU's lease is taken and given back between sentences, and relays the
samples as they come. Both put what they have on one queue that :func:`reply` yields from:
``("text", delta)``, ``("audio", pcm)`` (the first after ``("format", PcmFormat)``),
``("done", full_text)``, or ``("error", Failure)``, after which nothing else comes.
A consumer that stops early (its client left) closes every request still open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.config import ApiKey, PersonaVoice
from modelyard.gateway.inner import InnerClient, InnerResponse
from modelyard.sentences import SentenceCutter
from modelyard.wav import BadWav, PcmFormat, WavReader

Event = tuple[str, Any]


@dataclass(frozen=True)
class Failure:
    """A step that failed: the status and OpenAI error body to answer with."""

    status: int
    body: dict[str, Any]

    @classmethod
    async def of(cls, resp: InnerResponse, step: str) -> Failure:
        raw = await resp.read()
        try:
            body = orjson.loads(raw)
            message = body["error"]["message"]
            body["error"]["message"] = f"{step}: {message}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            body = {
                "error": {
                    "message": f"{step}: {raw[:300].decode('utf-8', 'replace')}",
                    "type": "upstream_error",
                    "param": None,
                    "code": None,
                }
            }
        return cls(resp.status, body)


async def opened(resp: InnerResponse, step: str) -> InnerResponse | Failure:
    """``resp`` if it is a success, else its failure (and it is closed)."""
    if resp.status < 400:
        return resp
    try:
        return await Failure.of(resp, step)
    finally:
        await resp.close()


class Speaking:
    """One persona reply, spoken as it is written."""

    def __init__(
        self, inner: InnerClient, key: ApiKey | None, voice: PersonaVoice | None, voice_name: str
    ) -> None:
        self.inner, self.key, self.voice, self.voice_name = inner, key, voice, voice_name
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._open: set[InnerResponse] = set()
        self.format: PcmFormat | None = None

    async def reply(self, chat: InnerResponse) -> AsyncGenerator[Event, None]:
        """The events of ``chat`` (a streamed chat answer, already a success); spoken if
        there is a voice. Close it (``aclose``) when done with it early."""
        speak = self.voice is not None
        tasks = [asyncio.create_task(self._read(chat, speak))]
        if speak:
            tasks.append(asyncio.create_task(self._speak()))
        running = len(tasks)
        said: str | None = None
        try:
            while running:
                kind, value = await self._events.get()
                if kind == "end":
                    running -= 1
                elif kind == "said":  # the text is over; the voice may not be yet
                    said = value
                else:
                    yield kind, value
                    if kind == "error":
                        return
            if said is not None:
                yield "done", said
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for resp in [chat, *self._open]:
                await resp.close()

    async def _read(self, chat: InnerResponse, speak: bool) -> None:
        cutter = SentenceCutter()
        text: list[str] = []
        try:
            async for kind, value in _chat_deltas(chat):
                if kind == "error":
                    await self._events.put(("error", value))
                    return
                text.append(value)
                await self._events.put(("text", value))
                for sentence in cutter.feed(value) if speak else ():
                    await self._sentences.put(sentence)
            for sentence in cutter.end() if speak else ():
                await self._sentences.put(sentence)
            await self._sentences.put(None)
            await self._events.put(("said", "".join(text)))
        finally:
            await self._events.put(("end", None))

    async def _speak(self) -> None:
        try:
            while (sentence := await self._sentences.get()) is not None:
                if not await self._say(sentence):
                    return
        finally:
            await self._events.put(("end", None))

    async def _say(self, sentence: str) -> bool:
        assert self.voice is not None, "only a persona with a voice speaks"
        body = {
            "model": self.voice.model,
            "voice": self.voice_name,
            "input": sentence,
            "response_format": "wav",
        }
        resp = await self.inner.request(
            "POST", "/v1/audio/speech", orjson.dumps(body), key=self.key
        )
        self._open.add(resp)
        try:
            got = await opened(resp, f"speaking {sentence[:40]!r}")
            if isinstance(got, Failure):
                await self._events.put(("error", got))
                return False
            wav = WavReader()
            async for chunk in resp.chunks():
                pcm = wav.feed(chunk)
                if self.format is None and wav.format is not None:
                    self.format = wav.format
                    await self._events.put(("format", wav.format))
                elif wav.format is not None and wav.format != self.format:
                    raise BadWav(f"the voice changed format mid-reply: {wav.format}")
                if pcm:
                    await self._events.put(("audio", pcm))
            return True
        except BadWav as exc:
            why = f"{self.voice.model}'s speech is not usable WAV: {exc}"
            failed: dict[str, Any] = {
                "error": {
                    "message": why,
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_error",
                }
            }
            await self._events.put(("error", Failure(502, failed)))
            return False
        finally:
            self._open.discard(resp)
            await resp.close()


async def _chat_deltas(chat: InnerResponse) -> AsyncIterator[tuple[str, Any]]:
    """A streamed chat's text deltas, ``("text", str)``; ``("error", Failure)`` if it
    ended with an error event."""
    pending = b""
    async for chunk in chat.chunks():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            try:
                event = orjson.loads(line[6:])
            except orjson.JSONDecodeError:
                continue
            if "error" in event:
                yield "error", Failure(502, {"error": event["error"]})
                return
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str) and content:
                    yield "text", content
