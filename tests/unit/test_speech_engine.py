"""The ``speech`` engine: its config, the endpoints and voices it serves, its command line; and
the gateway's reading of a transcription form's ``model``."""

from __future__ import annotations

import importlib.util
import sys
from typing import get_args

import pytest

from modelyard.config import Model
from modelyard.engines.catalog import KINDS, engine_for
from modelyard.engines.speech import _PACKAGES, VOICES, SpeechEngine, SpeechModel
from modelyard.gateway.audio import form_field
from tests.unit.test_engines import errors, model


def speech(spec: str, host: str = "127.0.0.1") -> SpeechEngine:
    m: Model = model(spec)
    assert isinstance(m, SpeechModel)
    engine = engine_for(m, host=host)
    assert isinstance(engine, SpeechEngine)
    return engine


def test_the_catalog_finds_it() -> None:
    assert "speech" in KINDS


def test_launch_runs_the_worker_with_its_engines() -> None:
    engine = speech(
        "engine: speech\ntts: hibari\nstt: whisper-tiny.en\nthreads: 2\nenv: {A: '1'}",
        host="10.0.0.5",
    )
    launch = engine.launch(8123)
    assert launch.argv == [
        *(sys.executable, "-m", "modelyard.speech.worker", "--host", "10.0.0.5"),
        *("--port", "8123", "--tts", "hibari", "--stt", "whisper-tiny.en", "--threads", "2"),
    ]
    assert launch.env["A"] == "1"
    assert launch.health_path == "/health"
    assert engine.upstream(8123).base_url == "http://10.0.0.5:8123/v1"
    assert engine.upstream(8123).model is None


def test_launch_with_one_engine() -> None:
    argv = speech("engine: speech\nstt: whisper-tiny.en").launch(9).argv
    assert "--tts" not in argv
    assert argv[-4:] == ["--stt", "whisper-tiny.en", "--threads", "1"]


def test_launch_with_piper() -> None:
    argv = speech("engine: speech\ntts: piper").launch(9).argv
    assert argv[-4:] == ["--tts", "piper", "--threads", "1"]
    assert "--stt" not in argv


def test_endpoints_follow_its_engines() -> None:
    assert model("engine: speech\ntts: hibari").endpoints == {"speech"}
    assert model("engine: speech\ntts: piper").endpoints == {"speech"}
    assert model("engine: speech\nstt: whisper-tiny.en").endpoints == {
        "transcriptions",
        "translations",
    }
    both = model("engine: speech\ntts: hibari\nstt: whisper-tiny.en")
    assert both.endpoints == {"speech", "transcriptions", "translations"}


@pytest.mark.parametrize(
    ("spec", "voices"),
    [
        ("tts: hibari", ("heart",)),
        ("tts: piper\nstt: whisper-tiny.en", ("joe",)),
        ("stt: whisper-tiny.en", ()),
    ],
)
def test_voices_are_known_without_the_worker(spec: str, voices: tuple[str, ...]) -> None:
    assert model(f"engine: speech\n{spec}").voices == voices


def test_every_tts_engine_has_its_voices_and_packages() -> None:
    tts = set(get_args(get_args(SpeechModel.model_fields["tts"].annotation)[0]))
    assert tts == {"hibari", "piper"} and set(VOICES) == tts
    assert tts | {"whisper-tiny.en"} == set(_PACKAGES)


def test_text_models_do_not_serve_audio_by_default() -> None:
    assert model("engine: command\ncommand: [x, '{port}']").endpoints == {
        "chat",
        "completions",
        "embeddings",
    }


def test_it_needs_an_engine() -> None:
    (message,) = errors("engine: speech")
    assert "needs `tts: hibari` or `tts: piper`" in message and "stt: whisper-tiny.en" in message


def test_unknown_engines_are_refused() -> None:
    assert any("tts" in e for e in errors("engine: speech\ntts: espeak"))
    assert any("stt" in e for e in errors("engine: speech\nstt: whisper-large"))


@pytest.mark.parametrize("tts", ["hibari", "piper"])
def test_the_installed_extra_is_no_problem(tts: str) -> None:
    assert speech(f"engine: speech\ntts: {tts}\nstt: whisper-tiny.en").problem() is None


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "piper" else real(name)
    )
    problem = speech("engine: speech\ntts: piper").problem()
    assert problem is not None and "missing piper" in problem
    assert speech("engine: speech\ntts: hibari").problem() is None


def test_unserved_hint_says_what_to_set() -> None:
    ears = model("engine: speech\nstt: whisper-tiny.en", name="ears")
    assert ears.unserved_hint("speech") == "set models.ears.tts (hibari or piper) for speech"
    assert "/v1/audio/translations only" in ears.unserved_hint("chat")
    voice = model("engine: speech\ntts: piper", name="voice")
    assert voice.unserved_hint("translations") == (
        "set models.voice.stt (whisper-tiny.en) for translations"
    )


FORM = (
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="file"; filename="model"\r\n'
    b"Content-Type: audio/wav\r\n\r\n"
    b'RIFF\r\n--X name="model"\r\n'
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\n'
    b"ears\r\n"
    b"--XyZ--\r\n"
)


def test_form_field_reads_the_model() -> None:
    assert form_field(FORM, "multipart/form-data; boundary=XyZ", "model") == "ears"
    assert form_field(FORM, 'multipart/form-data; boundary="XyZ"', "model") == "ears"


def test_form_field_absent() -> None:
    assert form_field(FORM, "multipart/form-data; boundary=XyZ", "language") is None
    assert form_field(FORM, "application/json", "model") is None
    assert form_field(FORM, "multipart/form-data", "model") is None
    assert form_field(b"junk", "multipart/form-data; boundary=XyZ", "model") is None
