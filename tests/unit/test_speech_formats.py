"""The speech worker's pure parts: loudness, WAV header, subtitles, errors, word error rate,
speed, the checks of its request bodies; and the 24 kHz of its ``pcm``."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from modelyard.speech import formats
from modelyard.speech.formats import Segment
from modelyard.speech.params import ApiError, speech_request, temperature, too_large


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


def test_verbose_json_names_its_task() -> None:
    assert formats.verbose_json(SEGMENTS, "english", 4.0, "translate")["task"] == "translate"


@pytest.mark.parametrize(("asked", "spoken"), [(0.25, 0.5), (1.0, 1.0), (1.5, 1.5), (4.0, 2.0)])
def test_engine_speed_is_clamped(asked: float, spoken: float) -> None:
    assert formats.engine_speed(asked) == spoken


def test_pcm_is_24_khz_whatever_the_engine_rate() -> None:
    pytest.importorskip("av")
    from modelyard.speech.audio import Encoder

    encoder = Encoder("pcm", 22050)  # piper's rate
    tone = np.sin(np.arange(22050, dtype=np.float32) / 5).astype(np.float32)
    out = encoder.encode(tone) + encoder.encode(np.zeros(0, np.float32))
    out += encoder.encode(tone[:11025]) + encoder.finish()
    # 1.5 s at 24 kHz, 16-bit: the resampler's state runs across the chunks, nothing lost.
    assert len(out) == 2 * 36000
    same = Encoder("pcm", formats.PCM_RATE)
    assert same.encode(tone) + same.finish() == formats.to_pcm16(tone)


GOOD = {"input": "Hello.", "voice": "joe"}


def test_speech_request_defaults() -> None:
    req = speech_request(GOOD, ("joe",))
    assert (req.text, req.voice, req.fmt, req.speed, req.sse) == (
        "Hello.",
        "joe",
        "mp3",
        1.0,
        False,
    )
    sse = speech_request({**GOOD, "voice": {"id": "joe"}, "stream_format": "sse"}, ("joe",))
    assert sse.voice == "joe" and sse.sse


@pytest.mark.parametrize(
    ("change", "param", "mentions"),
    [
        ({"voice": "heart"}, "voice", "this worker has: joe"),
        ({"voice": None}, "voice", "unknown voice"),
        ({"input": " "}, "input", "non-empty"),
        ({"input": "a" * 4097}, "input", "at most 4096"),
        ({"response_format": "ogg"}, "response_format", "mp3, opus"),
        ({"speed": True}, "speed", "0.25 to 4.0"),
        ({"speed": 0.1}, "speed", "0.25 to 4.0"),
        ({"stream_format": "ws"}, "stream_format", "'sse'"),
    ],
)
def test_speech_request_refusals(change: dict[str, object], param: str, mentions: str) -> None:
    with pytest.raises(ApiError) as caught:
        speech_request({**GOOD, **change}, ("joe",))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert mentions in caught.value.message


def test_speech_request_needs_an_object() -> None:
    with pytest.raises(ApiError, match="JSON object"):
        speech_request(["Hello."], ("joe",))


@pytest.mark.parametrize(("raw", "value"), [(None, None), ("0", 0.0), ("0.4", 0.4), ("1", 1.0)])
def test_temperature(raw: str | None, value: float | None) -> None:
    assert temperature(raw) == value


@pytest.mark.parametrize("raw", ["-0.1", "1.5", "warm", "nan"])
def test_temperature_refusals(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        temperature(raw)
    assert caught.value.param == "temperature"


def test_too_large_is_a_413_naming_the_limit() -> None:
    e = too_large(50 << 20)
    assert (e.status, e.param, e.code) == (413, "file", "request_too_large")
    assert str(50 << 20) in e.message and str(formats.MAX_UPLOAD_BYTES) in e.message
    assert "too large" in too_large(None).message
