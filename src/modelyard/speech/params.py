"""The worker's request bodies, read and checked: a speech request's JSON, the multipart form
of a transcription or a translation. Anything wrong is an ``ApiError`` in OpenAI's terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from modelyard.speech import formats

# The most one form may carry: the audio and 1 MiB for the other fields and the multipart.
MAX_FORM_BYTES = formats.MAX_UPLOAD_BYTES + (1 << 20)


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str
    fmt: str
    speed: float
    sse: bool


def speech_request(body: Any, voices: tuple[str, ...]) -> SpeechRequest:
    """A ``POST /v1/audio/speech`` body (parsed JSON), for an engine with ``voices``."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'input' must be a non-empty string", "input")
    if len(text) > formats.MAX_INPUT_CHARS:
        raise ApiError(
            400,
            f"'input' is {len(text)} characters; at most {formats.MAX_INPUT_CHARS} are allowed",
            "input",
            "string_above_max_length",
        )
    voice = body.get("voice")
    if isinstance(voice, dict):  # the SDK's {"id": ...} form of a custom voice
        voice = voice.get("id")
    if not isinstance(voice, str) or voice not in voices:
        raise ApiError(
            400,
            f"unknown voice {voice!r}; this worker has: {', '.join(voices)}",
            "voice",
            "invalid_voice",
        )
    fmt = body.get("response_format", "mp3")
    if fmt not in formats.SPEECH_FORMATS:
        raise ApiError(
            400,
            f"'response_format' must be one of {', '.join(formats.SPEECH_FORMATS)}",
            "response_format",
        )
    speed = body.get("speed", 1.0)
    low, high = formats.SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not low <= speed <= high:
        raise ApiError(400, f"'speed' must be a number from {low} to {high}", "speed")
    stream_format = body.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise ApiError(400, "'stream_format' must be 'audio' or 'sse'", "stream_format")
    return SpeechRequest(text, voice, str(fmt), float(speed), stream_format == "sse")


@dataclass(frozen=True)
class AudioForm:
    """A transcription's or translation's form."""

    data: bytes
    fmt: str
    language: str | None
    prompt: str | None
    temperature: float | None


def too_large(size: int | None) -> ApiError:
    """413, in OpenAI's shape; ``size`` when known (a chunked upload is cut off unmeasured)."""
    got = f"the upload is {size} bytes" if size is not None else "the upload is too large"
    return ApiError(
        413,
        f"{got}; at most {formats.MAX_UPLOAD_BYTES} bytes "
        f"({formats.MAX_UPLOAD_BYTES >> 20} MiB) of audio are allowed",
        "file",
        "request_too_large",
    )


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value != "" else None


def temperature(raw: str | None) -> float | None:
    """The form's ``temperature``: a number from 0 to 1, or None when not given."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # NaN too
        raise ApiError(400, "'temperature' must be a number from 0 to 1", "temperature")
    return value


async def audio_form(request: web.Request, translate: bool) -> AudioForm:
    """The multipart form of both speech-to-text endpoints (a translation's has no language)."""
    if request.content_type != "multipart/form-data":
        raise ApiError(400, f"expected multipart/form-data, got {request.content_type!r}")
    # Refused before reading it: the client hears 413 without the worker taking in 50 MB.
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise too_large(request.content_length)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge as e:  # a chunked upload, found too large as it came
        raise too_large(None) from e
    except ValueError as e:
        raise ApiError(400, f"the form could not be read: {e}") from e
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise ApiError(400, "'file' (an audio file) is required", "file")
    data = upload.file.read()
    if len(data) > formats.MAX_UPLOAD_BYTES:
        raise too_large(len(data))
    fmt = _field(form, "response_format") or "json"
    if fmt not in formats.TRANSCRIPT_FORMATS:
        raise ApiError(
            400,
            f"'response_format' must be one of {', '.join(formats.TRANSCRIPT_FORMATS)}",
            "response_format",
        )
    # A translation's source language is Whisper's to find: OpenAI's form has no `language`.
    language = None if translate else _field(form, "language")
    return AudioForm(
        data, fmt, language, _field(form, "prompt"), temperature(_field(form, "temperature"))
    )
