"""Text to speech engines: each one yields audio sentence by sentence, so a response streams
and a client that leaves stops the synthesis at the next sentence.

``hibari`` (hibari-tts, Apache-2.0): 24 kHz, the voices bundled in its package (offline: "heart").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modelyard.speech.formats import Audio, normalise


class TtsEngine(Protocol):
    name: str
    sample_rate: int
    voices: tuple[str, ...]

    def sentences(self, text: str, voice: str, speed: float) -> list[Any]:
        """The text cut into the units ``synth`` takes (one each, run in a worker thread)."""
        ...

    def synth(self, unit: Any, voice: str, speed: float) -> Audio:
        """One unit of ``sentences`` → mono float32 audio at ``sample_rate``."""
        ...


@dataclass
class HibariTts:
    name: str
    sample_rate: int
    voices: tuple[str, ...]
    _models: dict[str, Any]

    @classmethod
    def load(cls) -> HibariTts:
        import hibari  # type: ignore[import-untyped,unused-ignore]
        from hibari.voices import VOICES  # type: ignore[import-untyped,unused-ignore]

        # Only the voices inside the package: the others would be downloaded on first use.
        bundled = tuple(name for name, v in VOICES.items() if v.get("bundled"))
        models = {voice: hibari.Hibari(voice=voice) for voice in bundled}
        for model in models.values():
            model("Warm up.")  # loads the G2P and runs the model once
        return cls("hibari", int(hibari.SAMPLE_RATE), bundled, models)

    def sentences(self, text: str, voice: str, speed: float) -> list[Any]:
        phonemes: list[Any] = self._models[voice].phonemize(text)
        return phonemes

    def synth(self, unit: Any, voice: str, speed: float) -> Audio:
        model = self._models[voice]
        audio: Audio = model.from_ids(model.ids(unit), min(max(speed, 0.5), 2.0))
        # hibari speaks quietly (about -27 dBFS): bring each sentence to the target loudness.
        return normalise(np.asarray(audio, dtype=np.float32))


TTS_ENGINES = {"hibari": HibariTts.load}


def load_tts(name: str) -> TtsEngine:
    return TTS_ENGINES[name]()


def stream(engine: TtsEngine, text: str, voice: str, speed: float) -> Iterator[Audio]:
    """The whole synthesis in this thread (for tests and benchmarks)."""
    for unit in engine.sentences(text, voice, speed):
        yield engine.synth(unit, voice, speed)
