"""What an upstream answer says it cost: tokens (OpenAI's ``usage``, llama-server's
``timings``) or, for speech, the seconds of audio transcribed (the speech worker's
``X-Audio-Seconds`` header); kept in a :class:`Result` for the request log and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass
class Result:
    """How one upstream request went, for the slot, the request log and the metrics."""

    status: int  # a stream cut by a failure has the failure's status, not its 200
    error: str | None = None
    sent: float | None = None  # monotonic: the request went upstream
    first_byte: float | None = None  # monotonic: the answer's first byte came back
    tokens_in: int | None = None
    tokens_out: int | None = None
    audio_s: float | None = None  # of a transcription's upload, as the speech worker says


def count(result: Result, data: bytes) -> None:
    """Token counts from an answer's ``usage`` (OpenAI, Anthropic) or ``timings``
    (llama-server)."""
    for line in reversed(data.split(b"\n")):
        line = line.removeprefix(b"data: ").strip()
        if not line.startswith(b"{"):
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut between two chunks: no counts rather than wrong ones
        if not isinstance(event, dict):
            continue
        usage, timings = event.get("usage"), event.get("timings")
        if usage is None and isinstance(event.get("response"), dict):
            usage = event["response"].get("usage")  # OpenAI Responses: response.completed
        if isinstance(usage, dict):
            # Chat Completions' names, or Anthropic Messages' and OpenAI Responses'.
            result.tokens_in = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            result.tokens_out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
            return
        if isinstance(timings, dict):
            prompt = _int(timings.get("prompt_n"))
            cached = _int(timings.get("cache_n")) or 0
            result.tokens_in = None if prompt is None else prompt + cached
            result.tokens_out = _int(timings.get("predicted_n"))
            return


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def audio_seconds(text: str) -> float | None:
    """The seconds of audio a speech server's ``X-Audio-Seconds`` header says, if sane."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < 1e7 else None
