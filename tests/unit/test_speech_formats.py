"""The speech worker's pure parts: loudness, WAV header, subtitles, errors, word error rate."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from modelyard.speech import formats
from modelyard.speech.formats import Segment


def rms(a: formats.Audio) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def test_normalise_brings_quiet_speech_to_the_target() -> None:
    t = np.linspace(0, 1, 24000, dtype=np.float32)
    quiet = (0.04 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out = formats.normalise(quiet)
    assert out.dtype == np.float32
    assert rms(out) == pytest.approx(formats.TARGET_RMS, rel=1e-3)


def test_normalise_keeps_peaks_under_the_ceiling() -> None:
    spiky = np.full(1000, 0.01, np.float32)
    spiky[10] = 0.5
    out = formats.normalise(spiky)
    assert float(np.max(np.abs(out))) <= formats.PEAK_CEILING + 1e-6


@pytest.mark.parametrize("audio", [np.zeros(0, np.float32), np.zeros(100, np.float32)])
def test_normalise_leaves_silence_alone(audio: formats.Audio) -> None:
    assert np.array_equal(formats.normalise(audio), audio)


def test_normalise_never_amplifies_noise_beyond_the_cap() -> None:
    hiss = np.full(100, 1e-4, np.float32)
    assert float(np.max(formats.normalise(hiss))) == pytest.approx(1e-4 * formats.MAX_GAIN)


def test_pcm16_clips() -> None:
    out = formats.to_pcm16(np.array([0.0, 1.0, -2.0], np.float32))
    assert struct.unpack("<3h", out) == (0, 32767, -32767)


def test_wav_header() -> None:
    head = formats.wav_header(24000)
    assert len(head) == 44 and head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt "
    channels, rate, byte_rate, block, bits = struct.unpack("<HIIHH", head[22:36])
    assert (channels, rate, byte_rate, block, bits) == (1, 24000, 48000, 2, 16)


@pytest.mark.parametrize(
    ("seconds", "sep", "text"),
    [
        (0.0, ",", "00:00:00,000"),
        (1.2345, ".", "00:00:01.234"),
        (3661.5, ",", "01:01:01,500"),
        (-1.0, ",", "00:00:00,000"),
    ],
)
def test_timestamp(seconds: float, sep: str, text: str) -> None:
    assert formats.timestamp(seconds, sep) == text


SEGMENTS = [Segment(0.0, 2.5, " Hello there."), Segment(2.5, 4.0, " Bye.")]


def test_srt() -> None:
    assert formats.srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n00:00:02,500 --> 00:00:04,000\nBye.\n"
    )


def test_vtt() -> None:
    assert formats.vtt(SEGMENTS) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "00:00:02.500 --> 00:00:04.000\nBye.\n"
    )


def test_verbose_json() -> None:
    out = formats.verbose_json(SEGMENTS, "en", 4.0)
    assert out["text"] == "Hello there. Bye."
    assert out["duration"] == 4.0 and out["language"] == "en"
    assert [s["id"] for s in out["segments"]] == [0, 1]


def test_error_body_is_openais_shape() -> None:
    assert formats.error_body("bad", "voice") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "voice", "code": None}
    }


@pytest.mark.parametrize(
    ("ref", "hyp", "wer"),
    [
        ("The quick brown fox.", "the quick brown fox", 0.0),
        ("a b c d", "a x c d", 0.25),
        ("a b c d", "a b c", 0.25),
        ("a b", "a b c d", 1.0),
        ("", "", 0.0),
    ],
)
def test_word_error_rate(ref: str, hyp: str, wer: float) -> None:
    assert formats.word_error_rate(ref, hyp) == pytest.approx(wer)
