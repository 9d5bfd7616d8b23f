"""Audio in and out with PyAV (no ffmpeg binary): a streaming encoder, an upload decoder."""

from __future__ import annotations

from typing import Any

import av  # type: ignore[import-untyped,unused-ignore]
import numpy as np

from modelyard.speech.formats import PCM_RATE, Audio, to_pcm16, wav_header

# response_format -> (container, codec, the codec's sample rate or None for the source's).
_CODECS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48000),
    "aac": ("adts", "aac", None),
    "flac": ("flac", "flac", None),
}


class BadAudio(ValueError):
    """An upload that is not audio PyAV can decode (or holds no samples)."""


class _Sink:
    """A write-only, unseekable file: the muxer's bytes, taken as they come."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


class Encoder:
    """Mono float32 audio in, the bytes of ``fmt`` out, chunk by chunk (for a chunked response)."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.fmt = fmt
        self.rate = sample_rate
        self._started = False
        self._pts = 0
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None
        if fmt == "pcm" and sample_rate != PCM_RATE:
            # One resampler for the whole response: its state runs on across the chunks.
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=PCM_RATE)
        if fmt in _CODECS:
            container, codec, rate = _CODECS[fmt]
            self._container = av.open(self._sink, mode="w", format=container)
            self._stream = self._container.add_stream(codec, rate=rate or sample_rate)
            self._stream.layout = "mono"
            if fmt in ("mp3", "aac", "opus"):
                self._stream.bit_rate = 64000
        elif fmt not in ("wav", "pcm"):
            raise ValueError(f"unknown audio format {fmt!r}")

    def encode(self, audio: Audio) -> bytes:
        head = b""
        if not self._started:
            self._started = True
            head = wav_header(self.rate) if self.fmt == "wav" else b""
        if self._container is None:
            return head + to_pcm16(self._resample(audio))
        if audio.size == 0:
            return self._sink.take()
        frame = self._frame(audio)
        frame.pts = self._pts
        self._pts += audio.size
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def _frame(self, audio: Audio) -> Any:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1),
            format="flt",
            layout="mono",
        )
        frame.sample_rate = self.rate
        return frame

    def _resample(self, audio: Audio | None) -> Audio:
        """For ``pcm`` at another rate: ``audio`` at PCM_RATE (None: what the resampler holds)."""
        if self._resampler is None:
            return audio if audio is not None else np.zeros(0, np.float32)
        if audio is not None and audio.size == 0:
            return audio
        frames = self._resampler.resample(None if audio is None else self._frame(audio))
        parts = [f.to_ndarray().reshape(-1).astype(np.float32) for f in frames]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def finish(self) -> bytes:
        if self._container is None:
            head = b"" if self._started else self.encode(np.zeros(0, np.float32))
            return head + to_pcm16(self._resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # a half-written stream nobody reads
                pass


def decode(data: bytes, rate: int = 16000) -> tuple[Audio, float]:
    """Any container PyAV reads → mono float32 at ``rate``, and its duration in seconds."""
    import io

    if not data:
        raise BadAudio("the file is empty")
    chunks: list[Audio] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise BadAudio("the file holds no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
    except BadAudio:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as e:
        raise BadAudio(f"the file could not be decoded as audio ({e})") from e
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise BadAudio("the file holds no audio samples")
    return audio, audio.size / rate
