"""WAV as a stream, without an audio library: a persona speaks a reply sentence by sentence,
each sentence a WAV answer of its TTS model, joined into one WAV stream (pure, no I/O).

A streamed WAV's header cannot know its sizes; like the speech worker's, the one written
here says "as long as it goes" (0xFFFFFFFF), which players and decoders accept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_UNKNOWN = 0xFFFFFFFF


class BadWav(ValueError):
    """Bytes that are not a PCM WAV stream."""


@dataclass(frozen=True)
class PcmFormat:
    rate: int
    channels: int = 1
    width: int = 2  # bytes per sample (16-bit)


def wav_header(fmt: PcmFormat, data_bytes: int | None = None) -> bytes:
    """The 44-byte header of a PCM WAV; ``data_bytes`` unknown (None) for a stream."""
    size = _UNKNOWN if data_bytes is None else data_bytes
    riff = _UNKNOWN if data_bytes is None else 36 + data_bytes
    block = fmt.channels * fmt.width
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVE"
        + b"fmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, fmt.channels, fmt.rate, fmt.rate * block, block, fmt.width * 8
        )
        + b"data"
        + struct.pack("<I", size)
    )


class WavReader:
    """Feed a WAV answer's bytes as they come; get its PCM samples, header skipped."""

    def __init__(self) -> None:
        self.format: PcmFormat | None = None
        self._head = b""
        self._in_data = False

    def feed(self, data: bytes) -> bytes:
        """The PCM bytes ``data`` completes (none until the header has been read)."""
        if self._in_data:
            return data
        self._head += data
        if len(self._head) < 12:
            return b""
        if self._head[:4] != b"RIFF" or self._head[8:12] != b"WAVE":
            raise BadWav("not a RIFF/WAVE stream")
        at = 12
        while len(self._head) >= at + 8:
            kind, size = (
                self._head[at : at + 4],
                struct.unpack("<I", self._head[at + 4 : at + 8])[0],
            )
            body = at + 8
            if kind == b"data":
                if self.format is None:
                    raise BadWav("audio data before its format")
                self._in_data = True
                rest, self._head = self._head[body:], b""
                return rest
            if len(self._head) < body + size:
                break  # the chunk is not all here yet
            if kind == b"fmt ":
                tag, channels, rate = struct.unpack("<HHI", self._head[body : body + 8])
                bits = struct.unpack("<H", self._head[body + 14 : body + 16])[0]
                if tag not in (1, 0xFFFE) or bits != 16:
                    raise BadWav(f"only 16-bit PCM is joined (format {tag}, {bits} bits)")
                self.format = PcmFormat(rate, channels, 2)
            at = body + size + (size & 1)  # chunks are padded to an even size
        if len(self._head) > 1 << 16:
            raise BadWav("no audio data within the first 64 KiB")
        return b""
