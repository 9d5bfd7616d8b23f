"""The speech worker's pure parts: formats, limits, loudness, subtitles, errors.

No engine, no PyAV, no event loop: everything here is tested table by table in
``tests/unit/test_speech_formats.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float32]

# The longest text one speech request may carry (OpenAI's own limit).
MAX_INPUT_CHARS = 4096
# The largest upload one transcription may carry (OpenAI's own limit).
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
SPEED_RANGE = (0.25, 4.0)
# What the engines do with it: hibari's own limits, kept for piper so a speed sounds alike.
ENGINE_SPEED_RANGE = (0.5, 2.0)
# OpenAI's `pcm` is 24 kHz whatever the voice: engines at another rate are resampled to it.
PCM_RATE = 24000

SPEECH_FORMATS: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# What a request cost, for the gateway's request log: sent with the response's headers.
AUDIO_SECONDS_HEADER = "X-Audio-Seconds"  # transcriptions, translations: the input's length
INPUT_CHARACTERS_HEADER = "X-Input-Characters"  # speech: len(input)

# Loudness: hibari speaks at about -27 dBFS RMS; bring each chunk to -20 dBFS, peaks at most
# -1 dBFS, and never amplify silence or noise by more than MAX_GAIN.
TARGET_RMS = 0.1
PEAK_CEILING = 0.89
MAX_GAIN = 10.0


def normalise(audio: Audio) -> Audio:
    """``audio`` scaled to TARGET_RMS, its peaks kept under PEAK_CEILING."""
    if audio.size == 0:
        return audio.astype(np.float32)
    peak = float(np.max(np.abs(audio)))
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if peak == 0.0 or rms == 0.0:
        return audio.astype(np.float32)
    gain = min(TARGET_RMS / rms, PEAK_CEILING / peak, MAX_GAIN)
    return (audio * gain).astype(np.float32)


def engine_speed(speed: float) -> float:
    """The requested ``speed`` clamped to what the engines speak well."""
    low, high = ENGINE_SPEED_RANGE
    return min(max(speed, low), high)


def to_pcm16(audio: Audio) -> bytes:
    """Little-endian signed 16-bit samples."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV header for a stream of unknown length (sizes 0xFFFFFFFF)."""
    block = channels * 2
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + unknown.to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + channels.to_bytes(2, "little")
        + sample_rate.to_bytes(4, "little")
        + (sample_rate * block).to_bytes(4, "little")
        + block.to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + unknown.to_bytes(4, "little")
    )


@dataclass(frozen=True)
class Segment:
    """One transcribed stretch of speech."""

    start: float
    end: float
    text: str


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (``,`` for SRT, ``.`` for VTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: Iterable[Segment]) -> str:
    blocks = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(blocks)


def vtt(segments: Iterable[Segment]) -> str:
    blocks = [
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def joined_text(segments: Sequence[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())


def verbose_json(
    segments: Sequence[Segment], language: str, duration: float, task: str = "transcribe"
) -> dict[str, Any]:
    return {
        "task": task,
        "language": language,
        "duration": round(duration, 3),
        "text": joined_text(segments),
        "segments": [
            {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
            for i, s in enumerate(segments)
        ],
    }


def error_body(
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for comparing transcripts."""
    kept = "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text)
    return kept.split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit distance."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else math.inf
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)
