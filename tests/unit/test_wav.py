"""WAV as a stream (modelyard.wav): reading a model's WAV answer fed in any pieces, and
the header of the stream a persona's spoken reply is joined into."""

from __future__ import annotations

import io
import wave

import pytest

from modelyard.wav import PcmFormat, WavReader, wav_header

PCM = bytes(range(256)) * 40  # 10240 bytes: whole frames of 16-bit stereo


def wav_file(pcm: bytes, rate: int = 22050, width: int = 2, channels: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def fed(reader: WavReader, data: bytes, size: int) -> bytes:
    return b"".join(reader.feed(data[i : i + size]) for i in range(0, len(data), size))


@pytest.mark.parametrize("size", [1, 3, 44, 1000, 100_000])
def test_wav_reader_gives_the_pcm_of_a_file_fed_in_any_pieces(size: int) -> None:
    reader = WavReader()
    assert fed(reader, wav_file(PCM), size) == PCM
    assert reader.format == PcmFormat(22050, 2, 2)


def test_wav_reader_reads_the_workers_streamed_header() -> None:
    formats = pytest.importorskip("modelyard.speech.formats")  # the worker's own header
    reader = WavReader()
    assert reader.feed(formats.wav_header(24000)) == b""
    assert reader.format == PcmFormat(24000, 1, 2)
    assert reader.feed(b"\x01") == b""  # half a sample waits for its other half
    assert reader.feed(b"\x02\x03") == b"\x01\x02"
    assert reader.feed(b"\x04" + PCM) == b"\x03\x04" + PCM


def test_wav_reader_skips_other_chunks_and_their_padding() -> None:
    plain = wav_file(PCM, rate=8000, width=1, channels=1)
    listed = plain[:12] + b"LIST" + (3).to_bytes(4, "little") + b"abc\x00" + plain[12:]
    assert fed(WavReader(), listed, 7) == PCM


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"ID3\x04" + bytes(40), "not a RIFF/WAVE stream"),
        (wav_file(PCM)[:20] + (3).to_bytes(2, "little") + wav_file(PCM)[22:], "not integer PCM"),
        (b"RIFF\xff\xff\xff\xffWAVEdata\xff\xff\xff\xff" + PCM, "audio data before its format"),
        (b"RIFF\xff\xff\xff\xffWAVEjunk" + (70_000).to_bytes(4, "little") + bytes(70_000),
         "no audio data within the first 64 KiB"),
    ],
)  # fmt: skip
def test_wav_reader_refuses_what_it_cannot_play(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        WavReader().feed(data)


@pytest.mark.parametrize("fmt", [PcmFormat(24000), PcmFormat(22050, 2, 2), PcmFormat(8000, 1, 1)])
def test_the_header_written_is_read_back(fmt: PcmFormat) -> None:
    whole = wav_header(fmt, len(PCM)) + PCM
    with wave.open(io.BytesIO(whole)) as w:  # the standard library's reader agrees
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (
            fmt.rate, fmt.channels, fmt.width,
        )  # fmt: skip
        assert w.readframes(10**6) == PCM
    streamed = WavReader()
    assert streamed.feed(wav_header(fmt) + PCM) == PCM  # sizes unknown, as in a stream
    assert streamed.format == fmt
