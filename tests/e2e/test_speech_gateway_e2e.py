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

from tests.conftest import SENTENCE, ServedGateway, speech_models, write_config

av = pytest.importorskip("av")
pytest.importorskip("hibari")
pytest.importorskip("faster_whisper")

from modelyard.speech.formats import word_error_rate  # noqa: E402

MODELS = speech_models(voice_ttl="4s")


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
    voice, ears = cards["voice"].model_dump(), cards["ears"].model_dump()
    assert (voice["kind"], voice["endpoints"], voice["voices"]) == ("tts", ["speech"], ["heart"])
    assert (ears["kind"], ears["endpoints"]) == ("stt", ["transcriptions", "translations"])
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
    # Into English: with an English-only model, what was said.
    said = sdk.audio.translations.create(model="ears", file=("s.wav", audio, "audio/wav")).text
    assert word_error_rate(SENTENCE, said) <= 0.15, said

    # The voices, from the config: nothing is started to list them.
    voices = httpx.get(gw.url + "/v1/audio/voices", timeout=10).json()["data"]
    assert voices == [{"id": "heart", "object": "voice", "model": "voice"}]
    unknown = httpx.get(gw.url + "/v1/audio/voices?model=ears", timeout=10)
    assert unknown.status_code == 404 and "those that do: voice" in unknown.text

    # The request log counts speech in characters and seconds of audio, not tokens.
    rows = gw.admin("GET", "/admin/requests", params={"limit": 10}).json()["requests"]
    by_path = {r["endpoint"]: r for r in rows}
    assert by_path["/audio/speech"]["chars"] == len(SENTENCE)
    assert by_path["/audio/transcriptions"]["audio_s"] == pytest.approx(duration(audio), 0.05)
    assert by_path["/audio/translations"]["audio_s"] > 0.5
    metrics = gw.admin("GET", "/metrics").text
    assert f'modelyard_speech_total{{model="voice",unit="characters"}} {len(SENTENCE)}' in (
        metrics.replace(".0\n", "\n")
    )

    # Bad uploads through the gateway: clear errors, and the worker goes on serving.
    too_big = httpx.post(
        gw.url + "/v1/audio/transcriptions",
        data={"model": "ears"},
        files={"file": ("big.wav", b"\0" * (50 * 1024 * 1024), "audio/wav")},
        timeout=60,
    )
    assert too_big.status_code == 413 and "at most" in too_big.json()["error"]["message"]
    for bad in (b"not audio at all", audio[:40], b""):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.audio.transcriptions.create(model="ears", file=("x.wav", bad, "audio/wav"))
        assert refused.value.response.json()["error"]["param"] == "file"
    with pytest.raises(openai.BadRequestError) as voice:
        sdk.audio.speech.create(model="voice", voice="alloy", input="Hi.")  # type: ignore[arg-type]
    assert_refused(voice.value, "voice", "unknown voice 'alloy'", "heart")
    again = sdk.audio.transcriptions.create(model="ears", file=("s.wav", audio, "audio/wav"))
    assert word_error_rate(SENTENCE, again.text) <= 0.15

    # Idle past its ttl, the speech model is stopped like any other, its process gone.
    pid = gw.model("voice")["pid"]
    gw.wait_state("voice", "stopped", timeout=30)
    assert pid not in gw.engines()


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
