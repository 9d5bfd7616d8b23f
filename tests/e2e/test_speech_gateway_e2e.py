"""Speech models through a real gateway: the gateway starts the speech worker on demand and
serves ``/v1/audio/*`` through its one request path; spoken to with the official ``openai``
SDK pointed at the gateway."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServedGateway, write_config

av = pytest.importorskip("av")
pytest.importorskip("hibari")
pytest.importorskip("faster_whisper")

from modelyard.speech.formats import word_error_rate  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog."
MODELS = """\
  voice:
    engine: speech
    tts: hibari
    start_timeout: 120s
  ears:
    engine: speech
    stt: whisper-tiny.en
    threads: 2
    start_timeout: 120s
"""


def duration(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return float(samples / stream.rate)


@pytest.fixture
def gw(serve: Callable[[Path], ServedGateway], tmp_path: Path) -> ServedGateway:
    return serve(write_config(tmp_path, MODELS))


def client(gw: ServedGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=180)


def test_speech_and_transcription_through_the_gateway(gw: ServedGateway) -> None:
    sdk = client(gw)
    cards = {c.id: c for c in sdk.models.list().data}
    assert {"voice", "ears"} <= set(cards)
    listed = gw.admin("GET", "/admin/models").json()["models"]
    engines = {m["name"]: m["engine"] for m in listed}
    assert engines["voice"] == engines["ears"] == "speech"

    raw = sdk.audio.speech.with_raw_response.create(
        model="voice", voice="heart", input=SENTENCE, response_format="wav"
    )
    assert raw.headers["x-modelyard-model"] == "voice"
    assert raw.headers["content-type"] == "audio/wav"
    audio = raw.content
    assert duration(audio) > 0.5
    assert gw.model("voice")["state"] == "ready"

    heard = sdk.audio.transcriptions.with_raw_response.create(
        model="ears", file=("speech.wav", audio, "audio/wav")
    )
    assert heard.headers["x-modelyard-model"] == "ears"
    text = heard.parse().text
    assert word_error_rate(SENTENCE, text) <= 0.15, text
    assert gw.model("ears")["state"] == "ready"


def assert_refused(exc: openai.APIStatusError, param: str | None, *words: str) -> None:
    assert exc.status_code == 400, exc.response.text
    error: dict[str, Any] = exc.response.json()["error"]
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error


def test_refusals_name_what_is_wrong(gw: ServedGateway) -> None:
    sdk = client(gw)
    with pytest.raises(openai.BadRequestError) as chat:
        sdk.chat.completions.create(model="voice", messages=[{"role": "user", "content": "hi"}])
    assert_refused(chat.value, None, "does not serve chat")
    with pytest.raises(openai.BadRequestError) as wrong:
        sdk.audio.transcriptions.create(model="voice", file=("a.wav", b"RIFF", "audio/wav"))
    assert_refused(wrong.value, None, "does not serve transcriptions")
    with pytest.raises(openai.BadRequestError) as empty:
        sdk.audio.speech.create(model="voice", voice="heart", input="")
    assert_refused(empty.value, "input", "`input`")
    nameless = httpx.post(
        gw.url + "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")}, timeout=30
    )
    assert nameless.status_code == 400, nameless.text
    assert nameless.json()["error"]["param"] == "model"
    # Nothing above started a worker: refusals come before any model runs.
    assert gw.model("voice")["state"] != "ready"
