"""The speech worker as a real process (``python -m modelyard.speech.worker``), real engines
(hibari TTS, faster-whisper tiny.en), spoken to with the official ``openai`` SDK."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port, wait_healthy

av = pytest.importorskip("av")
pytest.importorskip("hibari")
pytest.importorskip("faster_whisper")

from modelyard.speech.formats import MAX_INPUT_CHARS, word_error_rate  # noqa: E402

LOGS: dict[str, Path] = {}
TWO_SENTENCES = "The quick brown fox jumps over the lazy dog. She sells seashells by the seashore."


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("speech") / "worker.log"
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "modelyard.speech.worker", "--port", str(port)),
                *("--tts", "hibari", "--stt", "whisper-tiny.en", "--threads", "2"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, lambda: log.read_text(), timeout=120)
        LOGS[url] = log
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(worker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker + "/v1", api_key="none", max_retries=0, timeout=60)


def duration(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return float(samples / stream.rate)


def speak(client: openai.OpenAI, text: str, fmt: str = "wav") -> bytes:
    return client.audio.speech.create(
        model="hibari", voice="heart", input=text, response_format=fmt
    ).read()


def assert_openai_error(e: openai.APIStatusError, status: int, param: str | None) -> None:
    assert e.status_code == status
    body = e.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param
    assert body["error"]["message"]


def test_health_and_voices(worker: str) -> None:
    assert httpx.get(worker + "/health").json()["status"] == "ok"
    voices = httpx.get(worker + "/v1/audio/voices").json()["data"]
    assert [v["id"] for v in voices] == ["heart"]


def test_round_trip_recovers_the_words(client: openai.OpenAI) -> None:
    started = time.monotonic()
    audio = speak(client, TWO_SENTENCES, "mp3")
    spoken = time.monotonic() - started
    seconds = duration(audio, "mp3")
    started = time.monotonic()
    text = client.audio.transcriptions.create(
        model="whisper-tiny.en", file=("speech.mp3", audio, "audio/mpeg")
    ).text
    heard = time.monotonic() - started
    wer = word_error_rate(TWO_SENTENCES, text)
    print(
        f"\nround trip: {text!r} WER {wer:.1%}; {seconds:.2f} s of audio, "
        f"TTS {seconds / spoken:.1f}x real time, STT {seconds / heard:.1f}x real time"
    )
    assert wer <= 0.15, text


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_each_format_decodes_to_the_same_duration(client: openai.OpenAI, fmt: str) -> None:
    reference = duration(speak(client, TWO_SENTENCES, "pcm"), "pcm")
    with client.audio.speech.with_streaming_response.create(
        model="hibari", voice="heart", input=TWO_SENTENCES, response_format=fmt
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        kind = response.headers["content-type"]
        data = response.read()
    expected = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}
    expected |= {"flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
    assert kind == expected[fmt]
    assert duration(data, fmt) == pytest.approx(reference, rel=0.1)


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "verbose_json", "vtt"])
def test_transcription_formats(client: openai.OpenAI, fmt: str) -> None:
    audio = speak(client, TWO_SENTENCES, "flac")
    out = client.audio.transcriptions.create(
        model="whisper-tiny.en",
        file=("speech.flac", audio),
        response_format=fmt,  # type: ignore[arg-type]
    )
    if fmt in ("json", "verbose_json"):
        text = out.text  # type: ignore[union-attr]
        if fmt == "verbose_json":
            assert out.duration == pytest.approx(duration(audio, "flac"), rel=0.1)  # type: ignore[union-attr]
    else:
        text = str(out)
        if fmt == "srt":
            assert text.startswith("1\n00:00:00,000 --> ")
        if fmt == "vtt":
            assert text.startswith("WEBVTT\n\n00:00:00.000 --> ")
        lines = text.splitlines()
        text = " ".join(x for x in lines if x[:1].isalpha() and x != "WEBVTT")
    assert word_error_rate(TWO_SENTENCES, text) <= 0.15, text


def test_bad_speech_requests(client: openai.OpenAI) -> None:
    cases = [
        ({"voice": "alloy", "input": "Hello."}, "voice", "heart"),
        ({"voice": "heart", "input": ""}, "input", "non-empty"),
        ({"voice": "heart", "input": "a" * (MAX_INPUT_CHARS + 1)}, "input", str(MAX_INPUT_CHARS)),
        ({"voice": "heart", "input": "Hi.", "speed": 9}, "speed", "4.0"),
    ]
    for args, param, mentions in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.speech.create(model="hibari", **args).read()  # type: ignore[arg-type]
        assert_openai_error(caught.value, 400, param)
        assert mentions in caught.value.response.json()["error"]["message"]
    assert duration(speak(client, "Still here."), "wav") > 0.3


def test_bad_uploads(client: openai.OpenAI, worker: str) -> None:
    good = speak(client, TWO_SENTENCES, "mp3")
    uploads = [
        ("notes.txt", b"this is not audio at all, only text\n" * 20, "text/plain"),
        ("empty.mp3", b"", "audio/mpeg"),
        ("cut.mp3", good[:40], "audio/mpeg"),
        ("noise.wav", bytes(range(256)) * 40, "audio/wav"),
    ]
    for upload in uploads:
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.transcriptions.create(model="whisper-tiny.en", file=upload)
        assert_openai_error(caught.value, 400, "file")
    # Not multipart at all.
    r = httpx.post(worker + "/v1/audio/transcriptions", json={"model": "whisper-tiny.en"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    out = client.audio.transcriptions.create(model="whisper-tiny.en", file=("ok.mp3", good))
    assert word_error_rate(TWO_SENTENCES, out.text) <= 0.15


def test_a_client_that_leaves_mid_synthesis(worker: str, client: openai.OpenAI) -> None:
    long_text = " ".join(f"This is sentence number {i} of a long reading." for i in range(60))
    host, port = worker.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": "hibari", "voice": "heart", "response_format": "wav", "input": long_text}
    )
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
    # The worker notices at the next sentence, stops, and serves the next request.
    assert duration(speak(client, "Next, please."), "wav") > 0.3
    deadline = time.monotonic() + 30
    while "synthesis stopped" not in LOGS[worker].read_text():
        assert time.monotonic() < deadline, LOGS[worker].read_text()
        time.sleep(0.1)
