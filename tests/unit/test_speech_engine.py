"""The ``speech`` engine: its config, the endpoints it serves, its command line; and the
gateway's reading of a transcription form's ``model``."""

from __future__ import annotations

import sys

from modelyard.config import Model
from modelyard.engines.catalog import KINDS, engine_for
from modelyard.engines.speech import SpeechEngine, SpeechModel
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


def test_endpoints_follow_its_engines() -> None:
    assert model("engine: speech\ntts: hibari").endpoints == {"speech"}
    assert model("engine: speech\nstt: whisper-tiny.en").endpoints == {"transcriptions"}
    both = model("engine: speech\ntts: hibari\nstt: whisper-tiny.en")
    assert both.endpoints == {"speech", "transcriptions"}


def test_text_models_do_not_serve_audio_by_default() -> None:
    assert model("engine: command\ncommand: [x, '{port}']").endpoints == {
        "chat",
        "completions",
        "embeddings",
    }


def test_it_needs_an_engine() -> None:
    (message,) = errors("engine: speech")
    assert "needs `tts: hibari`" in message and "stt: whisper-tiny.en" in message


def test_unknown_engines_are_refused() -> None:
    assert any("tts" in e for e in errors("engine: speech\ntts: piper"))
    assert any("stt" in e for e in errors("engine: speech\nstt: whisper-large"))


def test_the_installed_extra_is_no_problem() -> None:
    assert speech("engine: speech\ntts: hibari\nstt: whisper-tiny.en").problem() is None


def test_unserved_hint_says_what_to_set() -> None:
    ears = model("engine: speech\nstt: whisper-tiny.en", name="ears")
    assert ears.unserved_hint("speech") == "set models.ears.tts (hibari) for speech"
    assert "speech and" in ears.unserved_hint("chat")


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
