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
    """Feed a WAV answer's bytes as they come; get its PCM in whole frames, header skipped.

    A stream's header gives its sizes as unknown, so only the ``fmt `` chunk is read and
    ``data`` runs to the end."""

    def __init__(self) -> None:
        self.format: PcmFormat | None = None
        self._head = bytearray()
        self._pcm = bytearray()  # samples of a frame not yet whole
        self._in_data = False

    def feed(self, data: bytes) -> bytes:
        """The whole frames of PCM that ``data`` completes (none until the header is read)."""
        if not self._in_data:
            self._head += data
            data = self._parse()
            if not self._in_data:
                return b""
        assert self.format is not None
        frame = self.format.width * self.format.channels
        self._pcm += data
        whole = len(self._pcm) - len(self._pcm) % frame
        out = bytes(self._pcm[:whole])
        del self._pcm[:whole]
        return out

    def _parse(self) -> bytes:
        head, at = self._head, 12
        if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
            raise BadWav("not a RIFF/WAVE stream")
        while len(head) >= max(at + 8, 12):
            kind = bytes(head[at : at + 4])
            size = int.from_bytes(head[at + 4 : at + 8], "little")
            if kind == b"data":
                if self.format is None:
                    raise BadWav("audio data before its format")
                self._in_data, rest = True, bytes(head[at + 8 :])
                head.clear()
                return rest
            end = at + 8 + size + (size & 1)  # chunks are padded to an even size
            if len(head) < end:
                break  # the chunk is not all here yet
            if kind == b"fmt ":
                self.format = _format(bytes(head[at + 8 : end]))
            at = end
        if len(head) > 1 << 16:
            raise BadWav("no audio data within the first 64 KiB")
        return b""


def _format(body: bytes) -> PcmFormat:
    if len(body) < 16:
        raise BadWav("the format chunk is cut short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag not in (1, 0xFFFE) or bits not in (8, 16, 24, 32) or not channels or not rate:
        raise BadWav(f"not integer PCM (format {tag}, {bits} bits)")
    return PcmFormat(rate, channels, bits // 8)
