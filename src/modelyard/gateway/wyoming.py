"""Home Assistant's Wyoming protocol, served by the gateway's own speech models.

Each request a client makes goes through :attr:`Gateway.inner` (routing, the queue, the
worker started on demand, the request log), as the access key ``wyoming.key`` names:
``Synthesize`` becomes ``POST /v1/audio/speech`` (WAV, relayed as it arrives), audio sent
after ``Transcribe`` becomes ``POST /v1/audio/transcriptions``. No Zeroconf: the listener
is added in Home Assistant by host and port (docs/wyoming.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import orjson
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioFormat, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize

from modelyard import __version__
from modelyard.config import ApiKey, Wyoming, split_listen
from modelyard.gateway.inner import InnerResponse, form_body
from modelyard.wav import BadWav, PcmFormat, WavReader, wav_header

if TYPE_CHECKING:
    from modelyard.gateway.state import Gateway

log = logging.getLogger("modelyard.wyoming")

# The speech worker's upload limit (speech/formats.py, not imported: it needs numpy): the
# WAV sent must fit, header included.
MAX_AUDIO = 25 * 1024 * 1024 - 44
FRAMES_PER_CHUNK = 1024  # per AudioChunk sent, as wyoming-piper does
MAX_DATA = 64 * 1024  # an event's JSON data (the text to speak is in it)
MAX_PAYLOAD = 1024 * 1024  # one event's payload (a chunk of audio)
_ATTRIBUTION = Attribution(name="modelyard", url="")


class Upload:
    """Audio sent to be transcribed, kept in the format the client declared first."""

    def __init__(self, declared: AudioFormat, limit: int = MAX_AUDIO) -> None:
        rate, width, channels = declared.rate, declared.width, declared.channels
        if not (1000 <= rate <= 384_000 and width in (1, 2, 3, 4) and 1 <= channels <= 8):
            raise ValueError(f"unsupported audio: {rate} Hz, {width} bytes, {channels} channels")
        self.format, self.pcm, self.limit = AudioFormat(rate, width, channels), bytearray(), limit
        self._convert = AudioChunkConverter(rate, width, channels)  # for chunks that differ

    def add(self, chunk: AudioChunk) -> None:
        audio = self._convert.convert(chunk).audio
        if len(self.pcm) + len(audio) > self.limit:
            raise ValueError(f"the audio is over {self.limit} bytes, what one transcription takes")
        self.pcm += audio

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (self.format.rate * self.format.width * self.format.channels)

    def wav(self) -> bytes:
        fmt = PcmFormat(self.format.rate, self.format.channels, self.format.width)
        return wav_header(fmt, len(self.pcm)) + bytes(self.pcm)


async def refusal(resp: InnerResponse) -> Error:
    """The gateway's error answer as a Wyoming ``Error``: its message and code."""
    raw = await resp.read()
    try:
        error = orjson.loads(raw)["error"]
        return Error(text=str(error["message"]), code=str(error.get("code") or resp.status))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return Error(text=raw[:500].decode("utf-8", "replace") or f"status {resp.status}")


class WyomingListener:
    """The Wyoming server of ``spec``, in the gateway's process and event loop."""

    def __init__(self, gw: Gateway, spec: Wyoming) -> None:
        self.gw, self.spec = gw, spec
        self.host, self.port = split_listen(spec.listen)
        keys = {k.name: k for k in gw.config.access.keys}
        if spec.key is not None and spec.key not in keys:  # config/checks.py says so first
            raise ValueError(f"wyoming.key: no access key is named {spec.key!r}")
        self.key: ApiKey | None = keys.get(spec.key) if spec.key else None
        self.handlers: set[Handler] = set()
        self._server: AsyncTcpServer | None = None

    async def start(self) -> None:
        server = AsyncTcpServer(self.host, self.port)
        try:
            await server.start(lambda reader, writer: Handler(reader, writer, self))
        except OSError as exc:
            where = f"the Wyoming listener cannot listen on {self.spec.listen}"
            raise OSError(exc.errno, f"{where}: {exc.strerror or exc}") from exc
        self._server = server
        log.info("wyoming: listening on %s", self.spec.listen)
        if not self.host.startswith("127.") and self.host not in ("::1", "localhost"):
            who = f"the key {self.key.name!r}" if self.key else "no key (no limits)"
            why = "is open beyond this machine and Wyoming has no keys: whoever reaches it is"
            log.warning("wyoming: %s %s served as %s", self.spec.listen, why, who)

    async def close(self) -> None:
        server, self._server, open_ = self._server, None, list(self.handlers)
        if server is None:
            return
        for h in open_:
            if h.job is not None:
                h.job.cancel()  # each closes its request: the gateway stops the work
        await server.stop()  # no new connections; each handler's reader ends
        tasks = [h.task for h in open_ if h.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=5)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for h in open_:
            h.writer.transport.abort()  # what is left unsent to a client that stopped reading

    def voices(self) -> tuple[str, ...]:
        model = self.gw.config.resolve(self.spec.tts or "")
        return model.voices if model is not None else ()  # () but for a speech engine's

    def voice(self, asked: str | None) -> str | None:
        """The voice to ask for; None leaves it to the worker, whose refusal names them."""
        known = self.voices()
        if asked == "default" and not known:
            asked = None  # the name offered for a model that lists none (info)
        return asked or self.spec.voice or next(iter(known), None)

    def info(self) -> Info:
        tts, stt, info = self.spec.tts, self.spec.stt, Info()
        common: dict[str, Any] = {
            "attribution": _ATTRIBUTION,
            "installed": True,
            "version": __version__,
        }
        if tts is not None:
            voices = [TtsVoice(name=v, description=f"{tts}: {v}", languages=["en"], **common)
                      for v in self.voices() or [self.spec.voice or "default"]]  # fmt: skip
            what = f"{tts}, served by modelyard"
            info.tts = [TtsProgram(name="modelyard", description=what, voices=voices, **common)]
        if stt is not None:
            model = AsrModel(name=stt, description=stt, languages=["en"], **common)
            what = f"{stt}, served by modelyard"
            info.asr = [AsrProgram(name="modelyard", description=what, models=[model], **common)]
        return info


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, or None at the end, on a line that is not an event, or when the
    sizes it declares are past ``MAX_DATA`` and ``MAX_PAYLOAD`` (the ``wyoming`` package's
    own reader would wait for and keep any size a client declares)."""
    try:
        line = await reader.readline()  # bounded by the stream's limit (64 KiB)
        if not line:
            return None
        head = orjson.loads(line)
        if not isinstance(head, dict) or not isinstance(head.get("type"), str):
            return None
        data, sized, carried = (
            head.get("data") or {},
            head.get("data_length"),
            head.get("payload_length"),
        )
        for size, most in ((sized, MAX_DATA), (carried, MAX_PAYLOAD)):
            if size is not None and (type(size) is not int or not 0 <= size <= most):
                log.info("wyoming: an event declaring %r bytes (at most %d): closed", size, most)
                return None
        if sized:
            more = orjson.loads(await reader.readexactly(sized))
            data = {**data, **more} if isinstance(data, dict) and isinstance(more, dict) else None
            if data is None:
                return None
        payload = await reader.readexactly(carried) if carried else None
        return Event(type=head["type"], data=data, payload=payload)
    except (ValueError, asyncio.IncompleteReadError, ConnectionError):
        return None  # orjson's errors are ValueErrors, as is a line past the limit


class Handler(AsyncEventHandler):
    """One connection. A request runs as a job beside the reading of events: a client that
    leaves mid-answer is seen at once, and its request closed."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: WyomingListener
    ) -> None:
        super().__init__(reader, writer)
        self.up = up
        self.peer = ":".join(map(str, (writer.get_extra_info("peername") or ("?",))[:2]))
        self.task: asyncio.Task[Any] | None = None
        self.job: asyncio.Task[None] | None = None
        self.upload: Upload | None = None
        self.language: str | None = None

    async def run(self) -> None:
        """The base class's loop, reading with bounds (``read_event``); an event that is
        not what its type says ends the connection with an ``Error``."""
        self.task = asyncio.current_task()
        self.up.handlers.add(self)
        try:
            while (event := await read_event(self.reader)) is not None:
                try:
                    more = await self.handle_event(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    await self.fail(Error(text=f"a malformed {event.type!r} event: {exc!r}"))
                    break
                if not more:
                    break
        finally:
            self.up.handlers.discard(self)
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        if self.job is not None and not self.job.done():
            self.job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.job

    async def handle_event(self, event: Event) -> bool:
        if self.job is not None and not self.job.done():
            await asyncio.wait([self.job])  # answers go out in the order they were asked
        if Describe.is_type(event.type):
            log.info("wyoming %s: describe", self.peer)
            await self.write_event(self.up.info().event())
        elif Synthesize.is_type(event.type):
            ask = Synthesize.from_event(event)
            voice = self.up.voice(ask.voice.name if ask.voice is not None else None)
            self.start_job(self.synthesize(ask.text, voice))
        elif Transcribe.is_type(event.type):
            # Whisper takes "en", not "en-US": the language of a BCP 47 tag, if it is one.
            tag = (Transcribe.from_event(event).language or "").replace("_", "-").split("-")[0]
            self.language = tag.lower() if tag.isalpha() and len(tag) <= 8 else None
        elif AudioStart.is_type(event.type) or AudioChunk.is_type(event.type):
            return await self.hear(event)
        elif AudioStop.is_type(event.type) and self.upload is not None:
            upload, self.upload = self.upload, None
            self.start_job(self.transcribe(upload, self.language))
        return True

    async def hear(self, event: Event) -> bool:
        """Audio to be transcribed; a chunk with no AudioStart before it starts it."""
        try:
            if self.up.spec.stt is None:
                if AudioStart.is_type(event.type):
                    raise ValueError("this listener does not transcribe (no wyoming.stt)")
                return True
            if AudioStart.is_type(event.type) or self.upload is None:
                self.upload = Upload(AudioStart.from_event(event))
            if AudioChunk.is_type(event.type):
                self.upload.add(AudioChunk.from_event(event))
        except ValueError as exc:
            await self.fail(Error(text=str(exc), code="audio"))
            self.upload = None
            return not AudioChunk.is_type(event.type)  # past the limit: stop the flood
        return True

    def start_job(self, work: Coroutine[Any, Any, None]) -> None:
        async def job() -> None:
            try:
                await work
            except ConnectionError:  # a write to a client that has gone
                log.info("wyoming %s: left before its answer", self.peer)
            except ValueError as exc:  # audio that is not what it should be
                await self.fail(Error(text=str(exc), code="audio"))
            except Exception as exc:
                log.exception("wyoming %s: failed", self.peer)
                await self.fail(Error(text=f"the gateway failed: {exc}"))

        self.job = asyncio.create_task(job(), name=f"wyoming {self.peer}")

    async def fail(self, error: Error) -> None:
        log.info("wyoming %s: error: %s", self.peer, error.text)
        with contextlib.suppress(ConnectionError):
            await self.write_event(error.event())

    async def synthesize(self, text: str, voice: str | None) -> None:
        if self.up.spec.tts is None:
            raise ValueError("this listener does not speak (no wyoming.tts)")
        began, frames, wav = time.monotonic(), 0, WavReader()
        body = {"model": self.up.spec.tts, "input": text, "response_format": "wav"}
        if voice is not None:
            body["voice"] = voice
        resp = await self.up.gw.inner.request(
            "POST", "/v1/audio/speech", orjson.dumps(body), key=self.up.key
        )
        try:
            if resp.status != 200:
                return await self.fail(await refusal(resp))
            # Relayed as the worker writes it, sentence by sentence: never the whole answer.
            async for data in resp.chunks():
                if pcm := wav.feed(data):
                    assert wav.format is not None, "PCM comes after the format"
                    fmt = (wav.format.rate, wav.format.width, wav.format.channels)
                    if not frames:
                        await self.write_event(AudioStart(*fmt).event())
                    step = FRAMES_PER_CHUNK * fmt[1] * fmt[2]
                    for i in range(0, len(pcm), step):
                        await self.write_event(AudioChunk(*fmt, audio=pcm[i : i + step]).event())
                    frames += len(pcm) // (fmt[1] * fmt[2])
            if wav.format is None:
                raise BadWav("the model's answer has no audio")
            got = wav.format
            if not frames:  # a header and no samples: an empty sound, in its format
                await self.write_event(AudioStart(got.rate, got.width, got.channels).event())
            await self.write_event(AudioStop().event())
            took = time.monotonic() - began
            log.info("wyoming %s: synthesize %d chars, voice %s: %.2f s of audio in %.2f s",
                     self.peer, len(text), voice, frames / got.rate, took)  # fmt: skip
        except asyncio.CancelledError:
            log.info("wyoming %s: left mid-synthesis, which is stopped", self.peer)
            raise
        finally:
            await resp.close()  # not read to its end: the gateway stops the synthesis

    async def transcribe(self, upload: Upload, language: str | None) -> None:
        began, stt = time.monotonic(), self.up.spec.stt or ""
        fields = {"model": stt, "response_format": "json"}
        if language:
            fields["language"] = language
        body, content_type = form_body(fields, "audio.wav", upload.wav(), "audio/wav")
        resp = await self.up.gw.inner.request(
            "POST", "/v1/audio/transcriptions", body, key=self.up.key, content_type=content_type
        )
        try:
            if resp.status != 200:
                return await self.fail(await refusal(resp))
            text = str((await resp.json()).get("text", ""))
            await self.write_event(Transcript(text=text).event())
            log.info("wyoming %s: transcribe %.2f s of audio: %d words in %.2f s", self.peer,
                     upload.seconds, len(text.split()), time.monotonic() - began)  # fmt: skip
        finally:
            await resp.close()
