"""A persona's voice and ears: ``POST /v1/personas/{name}/speak`` and ``.../listen``.

Each is made of the gateway's own requests (:mod:`modelyard.gateway.inner`), taken as the
key that asked: a transcription by the persona's ``ears``, a chat with the persona, speech
by its ``voice``. So each step is routed, queued, leased, logged and refused like any other
request, and its refusal comes back as it was, its message saying which step it was.

``/speak`` with ``input``: that text in the persona's voice (any format of
``/v1/audio/speech``). With ``messages``: the persona answers them and speaks its answer
while it is written (:mod:`modelyard.gateway.speaking`). ``/listen``: a multipart ``file``
is transcribed and answered; with ``speak=true`` the answer is spoken too. The reply of
the last two comes as ``stream_format``: ``audio`` (WAV, streamed sentence by sentence; the
default when speaking), ``sse`` (events: transcript, text deltas, audio deltas, done) or
``json`` (all at once; the default when not speaking).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelyard.config import ApiKey, Persona
from modelyard.errors import BodyStalled, BodyTooLarge, Code, Refusal
from modelyard.gateway.body import CLOSE, read_body
from modelyard.gateway.errors import openai_error
from modelyard.gateway.inner import InnerResponse, form_body
from modelyard.gateway.speaking import Event, Failure, Speaking, opened
from modelyard.gateway.state import Gateway
from modelyard.wav import PcmFormat, wav_header

_FORMATS = ("audio", "sse", "json")


class SpokenReplyCut(Exception):
    """A step of a reply failed after its audio had begun: the WAV stream is cut short."""


_RELAYED = ("content-type", "content-length")  # and every x-modelyard-* header


async def speak(request: Request) -> Response:
    gw, name, persona, key = _who(request)
    if isinstance(persona, Refusal):
        return openai_error(persona)
    raw = await _body(request, gw)
    if isinstance(raw, Response):
        return raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _bad(f"the request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _bad("the request body must be a JSON object")
    voice = _voice(gw, name, persona, body.get("voice"))
    if isinstance(voice, Refusal):
        return openai_error(voice)
    messages = body.get("messages")
    if messages is None:  # text to speech, in its voice: every format of /v1/audio/speech
        assert persona.voice is not None, "_voice refuses a persona without one"
        said = {**body, "model": persona.voice.model, "voice": voice}
        resp = await gw.inner.request("POST", "/v1/audio/speech", orjson.dumps(said), key=key)
        return _relay(resp)
    if not isinstance(messages, list) or not messages:
        return _bad(
            "`messages` must be a non-empty list (or give `input`, text to say)", "messages"
        )
    form = _stream_format(body.get("stream_format"), speak=True)
    if isinstance(form, Refusal):
        return openai_error(form)
    # The rest of the body is the chat's (max_tokens, temperature, ...).
    chat = {k: v for k, v in body.items() if k not in ("voice", "stream_format", "input")}
    return await _answer(gw, name, persona, key, voice, chat, form, True, None)


async def listen(request: Request) -> Response:
    gw, name, persona, key = _who(request)
    if isinstance(persona, Refusal):
        return openai_error(persona)
    if persona.ears is None:
        why = f"persona {name!r} has no ears: set personas.{name}.ears to a speech-to-text model"
        return openai_error(Refusal(Code.UNSUPPORTED_ENDPOINT, why))
    raw = await _body(request, gw)
    if isinstance(raw, Response):
        return raw
    fields = await _form(request, raw)
    if isinstance(fields, Refusal):
        return openai_error(fields)
    upload, values = fields
    wants_speech = values.get("speak", "false").lower() in ("1", "true", "yes", "on")
    voice: str | None = None
    if wants_speech:
        found = _voice(gw, name, persona, values.get("voice"))
        if isinstance(found, Refusal):
            return openai_error(found)
        voice = found
    form = _stream_format(values.get("stream_format"), speak=wants_speech)
    if isinstance(form, Refusal):
        return openai_error(form)
    asked = {"model": persona.ears, "response_format": "json"}
    asked |= {k: values[k] for k in ("language", "prompt") if values.get(k)}
    data, content_type = form_body(asked, *upload)
    heard = await gw.inner.request(
        "POST", "/v1/audio/transcriptions", data, key=key, content_type=content_type
    )
    got = await opened(heard, "hearing the question")
    if isinstance(got, Failure):
        return JSONResponse(got.body, status_code=got.status)
    try:
        transcript = str((await got.json()).get("text", "")).strip()
    finally:
        await got.close()
    if not transcript:
        return _bad("no speech was heard in `file`", "file")
    chat = {"messages": [{"role": "user", "content": transcript}]}
    return await _answer(gw, name, persona, key, voice, chat, form, wants_speech, transcript)


async def _answer(
    gw: Gateway,
    name: str,
    persona: Persona,
    key: ApiKey | None,
    voice: str | None,
    chat: dict[str, Any],
    form: str,
    wants_speech: bool,
    transcript: str | None,
) -> Response:
    """The persona's answer to the ``chat`` request's messages, as text and
    (``wants_speech``) in its voice."""
    asked = {**chat, "model": name, "stream": True}
    thinking = await gw.inner.request("POST", "/v1/chat/completions", orjson.dumps(asked), key=key)
    got = await opened(thinking, f"{name} thinking")
    if isinstance(got, Failure):
        return JSONResponse(got.body, status_code=got.status)
    speaking = Speaking(gw.inner, key, persona.voice if wants_speech else None, voice or "")
    events = speaking.reply(got)
    headers = {"x-modelyard-persona": name}
    if transcript is not None:
        headers["x-modelyard-transcript"] = quote(transcript[:2000])
    if form == "json":
        try:
            return await _as_json(events, transcript, headers)
        finally:
            await events.aclose()
    if form == "sse":
        return StreamingResponse(
            _as_sse(events, transcript),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    return await _as_wav(events, headers)


async def _as_json(
    events: AsyncGenerator[Event, None], transcript: str | None, headers: dict[str, str]
) -> Response:
    text, pcm, fmt = "", bytearray(), None
    async for kind, value in events:
        if kind == "error":
            return JSONResponse(value.body, status_code=value.status, headers=headers)
        if kind == "done":
            text = value
        elif kind == "format":
            fmt = value
        elif kind == "audio":
            pcm += value
    answer: dict[str, Any] = {"text": text}
    if transcript is not None:
        answer = {"transcript": transcript, **answer}
    if fmt is not None:
        wav = wav_header(fmt, len(pcm)) + bytes(pcm)
        answer["audio"] = {"format": "wav", "data": base64.b64encode(wav).decode()}
    return JSONResponse(answer, headers=headers)


async def _as_sse(
    events: AsyncGenerator[Event, None], transcript: str | None
) -> AsyncIterator[bytes]:
    def event(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    if transcript is not None:
        yield event({"type": "transcript", "text": transcript})
    async with contextlib.aclosing(events):
        async for kind, value in events:
            if kind == "text":
                yield event({"type": "text.delta", "delta": value})
            elif kind == "format":
                yield event(
                    {
                        "type": "speech.audio.format",
                        "format": "pcm",
                        "sample_rate": value.rate,
                        "channels": value.channels,
                        "bits": value.width * 8,
                    }
                )
            elif kind == "audio":
                yield event(
                    {"type": "speech.audio.delta", "audio": base64.b64encode(value).decode()}
                )
            elif kind == "done":
                yield event({"type": "done", "text": value, "transcript": transcript})
            elif kind == "error":
                yield event({"type": "error", **value.body})


async def _as_wav(events: AsyncGenerator[Event, None], headers: dict[str, str]) -> Response:
    """Audio only: the first sentence's format is awaited (an error before it is answered
    as an error), then the samples stream as they come. A failure after that cuts the
    stream (nothing in a WAV can say why; the request log and each step's row do)."""
    fmt: PcmFormat | None = None
    async for kind, value in events:
        if kind == "error":
            await events.aclose()
            return JSONResponse(value.body, status_code=value.status, headers=headers)
        if kind == "format":
            fmt = value
            break
        if kind == "done":  # a reply with nothing to say: an empty WAV
            await events.aclose()
            return Response(
                wav_header(PcmFormat(24000), 0), media_type="audio/wav", headers=headers
            )
    assert fmt is not None

    async def samples() -> AsyncIterator[bytes]:
        yield wav_header(fmt)
        async with contextlib.aclosing(events):
            async for kind, value in events:
                if kind == "audio":
                    yield value
                elif kind == "error":  # cut: the connection closes without the last chunk
                    raise SpokenReplyCut(f"the spoken reply failed: {value.body}")

    return StreamingResponse(samples(), media_type="audio/wav", headers=headers)


def _relay(resp: InnerResponse) -> Response:
    headers = {
        k: v for k, v in resp.headers.items() if k in _RELAYED or k.startswith("x-modelyard-")
    }

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.chunks():
                yield chunk
        finally:
            await resp.close()

    return StreamingResponse(body(), status_code=resp.status, headers=headers)


# -- the request ----------------------------------------------------------------------------


def _who(request: Request) -> tuple[Gateway, str, Persona | Refusal, ApiKey | None]:
    gw: Gateway = request.app.state.gateway
    name = request.path_params["name"]
    key = request.scope.get("state", {}).get("api_key")
    persona = gw.config.personas.get(name)
    if persona is None:
        known = ", ".join(gw.config.personas) or "none"
        why = f"persona {name!r} does not exist; personas: {known}"
        return gw, name, Refusal(Code.PERSONA_NOT_FOUND, why), key
    return gw, name, persona, key


def _voice(gw: Gateway, name: str, persona: Persona, asked: Any) -> str | Refusal:
    """The voice to speak in: the one asked for, the persona's, or its model's first."""
    if persona.voice is None:
        return Refusal(
            Code.UNSUPPORTED_ENDPOINT,
            f"persona {name!r} has no voice: set personas.{name}.voice to a text-to-speech model",
        )
    if isinstance(asked, str) and asked:
        return asked  # checked by the model, which lists its voices if it has no such one
    model = gw.config.resolve(persona.voice.model)
    voices = model.voices if model is not None else ()
    chosen = persona.voice.voice or (voices[0] if voices else None)
    if chosen is None:
        why = (
            f"name a `voice`: personas.{name}.voice names none and "
            f"{persona.voice.model!r} does not list its own"
        )
        return Refusal(Code.INVALID_REQUEST, why, param="voice")
    return chosen


def _stream_format(asked: Any, speak: bool) -> str | Refusal:
    form = asked or ("audio" if speak else "json")
    if form not in _FORMATS or (form == "audio" and not speak):
        allowed = _FORMATS if speak else ("sse", "json")
        return Refusal(
            Code.INVALID_REQUEST,
            "`stream_format` must be one of: " + ", ".join(allowed),
            param="stream_format",
        )
    return str(form)


async def _body(request: Request, gw: Gateway) -> bytes | Response:
    try:
        return await read_body(request.receive, gw.config.access.body_timeout)
    except ClientDisconnect:
        return Response(status_code=499)
    except BodyTooLarge as exc:
        return openai_error(Refusal(None, str(exc), headers=CLOSE, status=413))
    except BodyStalled as exc:
        return openai_error(Refusal(Code.BODY_TIMEOUT, str(exc), headers=CLOSE))


async def _form(
    request: Request, raw: bytes
) -> tuple[tuple[str, bytes, str], dict[str, str]] | Refusal:
    """The upload (name, bytes, type) and the text fields of a multipart body."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
        return Refusal(
            Code.INVALID_REQUEST,
            "expected multipart/form-data with an audio "
            f"`file`, got {request.headers.get('content-type')!r}",
        )

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        async with Request(request.scope, receive).form(max_files=1, max_fields=20) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return Refusal(
                    Code.INVALID_REQUEST, "`file` (an audio file) is required", param="file"
                )
            data = await upload.read()
            kind = upload.content_type or "application/octet-stream"
            values = {k: v for k, v in form.items() if isinstance(v, str)}
            return (upload.filename or "audio", data, kind), values
    except Exception as exc:  # python-multipart's and Starlette's parse errors
        return Refusal(Code.INVALID_REQUEST, f"the form could not be read: {exc}")


def _bad(message: str, param: str | None = None) -> Response:
    return openai_error(Refusal(Code.INVALID_REQUEST, message, param=param))


routes = [
    Route("/v1/personas/{name}/speak", speak, methods=["POST"]),
    Route("/v1/personas/{name}/listen", listen, methods=["POST"]),
]
