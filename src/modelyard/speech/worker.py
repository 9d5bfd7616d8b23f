"""The speech worker: OpenAI's audio endpoints from offline engines, as a process of its own.

    python -m modelyard.speech.worker --port 8090 --tts hibari --stt whisper-tiny.en

Serves ``GET /health`` (503 while the engines load, then 200), ``GET /v1/models``,
``GET /v1/audio/voices``, ``POST /v1/audio/speech``, ``POST /v1/audio/transcriptions`` and
``POST /v1/audio/translations``.
Each engine runs one request at a time in a thread of its own (others wait their turn);
a client that disconnects mid-synthesis stops it at the next sentence. See docs/speech.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from modelyard.speech import formats
from modelyard.speech.audio import BadAudio, Encoder, decode
from modelyard.speech.formats import error_body
from modelyard.speech.params import MAX_FORM_BYTES, ApiError, audio_form, speech_request
from modelyard.speech.stt import STT_MODELS, WhisperStt, load_stt
from modelyard.speech.tts import TTS_ENGINES, TtsEngine, load_tts

log = logging.getLogger("modelyard.speech")
T = TypeVar("T")


@dataclass
class Lane:
    """One engine's thread and turn: one request at a time."""

    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


@dataclass
class Worker:
    tts_name: str | None
    stt_name: str | None
    threads: int
    tts: TtsEngine | None = None
    stt: WhisperStt | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    failed: str | None = None
    tts_lane: Lane = field(default_factory=Lane)
    stt_lane: Lane = field(default_factory=Lane)

    def load(self) -> None:
        try:
            if self.tts_name:
                self.tts = load_tts(self.tts_name)
            if self.stt_name:
                self.stt = load_stt(self.stt_name, self.threads)
            self.ready.set()
            log.info("speech worker ready: tts=%s stt=%s", self.tts_name, self.stt_name)
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.exception("loading the speech engines failed")

    def loaded(self) -> None:
        if not self.ready.is_set():
            raise ApiError(
                503, self.failed or "the speech engines are still loading", code="loading"
            )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


@web.middleware
async def openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _json(error_body(e.message, e.param, e.code), e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json(error_body(e.reason, code=str(e.status)), e.status)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as e:
        log.exception("request failed")
        return _json(error_body(f"internal error: {e}", kind="server_error"), 500)


def worker_of(request: web.Request) -> Worker:
    w: Worker = request.app["worker"]
    return w


async def health(request: web.Request) -> web.Response:
    w = worker_of(request)
    if w.failed:
        return _json({"status": "failed", "error": w.failed}, 503)
    if not w.ready.is_set():
        return _json({"status": "loading"}, 503)
    return _json({"status": "ok", "tts": w.tts_name, "stt": w.stt_name})


async def models(request: web.Request) -> web.Response:
    w = worker_of(request)
    names = [n for n in (w.tts_name, w.stt_name) if n]
    return _json({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


async def voices(request: web.Request) -> web.Response:
    w = worker_of(request)
    w.loaded()
    found = w.tts.voices if w.tts else ()
    name = w.tts_name
    return _json(
        {"object": "list", "data": [{"id": v, "object": "voice", "engine": name} for v in found]}
    )


async def speech(request: web.Request) -> web.StreamResponse:
    w = worker_of(request)
    w.loaded()
    if w.tts is None:
        raise ApiError(404, "this worker serves no text-to-speech engine", code="not_found")
    tts = w.tts
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"the body is not JSON: {e}") from e
    req = speech_request(body, tts.voices)
    text, voice, fmt, speed, sse = req.text, req.voice, req.fmt, req.speed, req.sse
    encoder = Encoder(fmt, tts.sample_rate)

    def chunk(unit: Any) -> bytes:
        return encoder.encode(tts.synth(unit, voice, speed))

    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream" if sse else formats.SPEECH_FORMATS[fmt],
            # For the gateway's request log: sent before the audio, as the stream may not end.
            formats.INPUT_CHARACTERS_HEADER: str(len(text)),
        }
    )
    resp.enable_chunked_encoding()

    async def send(data: bytes) -> None:
        if not data:
            return
        if sse:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            data = b"data: " + orjson.dumps(event) + b"\n\n"
        await resp.write(data)

    async with w.tts_lane.lock:
        finished = False
        began = ended = time.time()
        try:
            units = await w.tts_lane.run(tts.sentences, text, voice, speed)
            await resp.prepare(request)
            for unit in units:
                # A client that left makes this write raise: the synthesis stops here.
                await send(await w.tts_lane.run(chunk, unit))
            await send(await w.tts_lane.run(encoder.finish))
            ended = time.time()  # the engine's work is over; the answer's end may lag
            finished = True
            if sse:
                done = {"type": "speech.audio.done", "usage": {"input_tokens": len(text)}}
                await resp.write(b"data: " + orjson.dumps(done) + b"\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            log.info("speech: the client left; synthesis stopped")
            raise
        finally:
            if not finished:
                await w.tts_lane.run(encoder.abort)
            # The engine's own timing (wall clock), one line per synthesis: what it did when.
            ended = ended if finished else time.time()
            log.info("speech: %d characters, busy %.3f to %.3f", len(text), began, ended)
    return resp


async def _speech_to_text(request: web.Request, task: str) -> web.Response:
    """``task`` "transcribe" (text in the language spoken) or "translate" (text in English)."""
    w = worker_of(request)
    w.loaded()
    if w.stt is None:
        raise ApiError(404, "this worker serves no speech-to-text engine", code="not_found")
    stt = w.stt
    form = await audio_form(request, translate=task == "translate")
    try:
        audio, duration = await asyncio.get_running_loop().run_in_executor(None, decode, form.data)
    except BadAudio as e:
        raise ApiError(400, f"'file' is not usable audio: {e}", "file", "invalid_audio") from e
    async with w.stt_lane.lock:
        began = time.time()
        result = await w.stt_lane.run(
            stt.transcribe, audio, form.language, form.prompt, form.temperature, task
        )
        log.info("%s: %.3f s of audio, busy %.3f to %.3f", task, duration, began, time.time())
    # For the gateway's request log: what this request cost, in seconds of audio heard.
    headers = {formats.AUDIO_SECONDS_HEADER: f"{duration:.3f}"}
    segments, fmt = result.segments, form.fmt
    if fmt in ("json", "verbose_json"):
        body: dict[str, Any] = {"text": formats.joined_text(segments)}
        if fmt == "verbose_json":
            # OpenAI names a translation's language by the output's: always English.
            language = result.language if task == "transcribe" else "english"
            body = formats.verbose_json(segments, language, duration, task)
        return _json(body, headers=headers)
    text = {"text": formats.joined_text(segments) + "\n", "srt": formats.srt(segments)}.get(
        fmt, formats.vtt(segments) if fmt == "vtt" else ""
    )
    return web.Response(
        text=text, content_type="text/vtt" if fmt == "vtt" else "text/plain", headers=headers
    )


async def transcriptions(request: web.Request) -> web.Response:
    return await _speech_to_text(request, "transcribe")


async def translations(request: web.Request) -> web.Response:
    return await _speech_to_text(request, "translate")


def build_app(worker: Worker) -> web.Application:
    app = web.Application(middlewares=[openai_errors], client_max_size=MAX_FORM_BYTES)
    app["worker"] = worker
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/audio/voices", voices)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)

    async def start_loading(app: web.Application) -> None:
        threading.Thread(target=worker.load, name="speech-load", daemon=True).start()

    app.on_startup.append(start_loading)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m modelyard.speech.worker", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tts", choices=sorted(TTS_ENGINES), help="the text-to-speech engine")
    p.add_argument("--stt", choices=sorted(STT_MODELS), help="the speech-to-text model")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the STT engine")
    args = p.parse_args(argv)
    if not args.tts and not args.stt:
        p.error("give --tts, --stt or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    worker = Worker(args.tts, args.stt, args.threads)
    web.run_app(build_app(worker), host=args.host, port=args.port, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
