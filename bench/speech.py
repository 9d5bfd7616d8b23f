"""Speech through the gateway against the worker called directly: real-time factors, the
worker's memory (issue 14), and a persona's time to first audio when it speaks while it
thinks.

Starts ``modelyard serve`` on a throwaway config. Two parts, both by default (``--only``
picks one):

**Real-time factors and memory** (``rtf``): one speech model, ``speech`` (``engine:
speech``, ``tts: hibari``, ``stt: whisper-tiny.en``, ``--threads`` STT threads), warmed with
one synthesis and one transcription through the gateway; the worker's own URL
(``upstream``) and pid come from ``GET /admin/models``. Then ``--runs`` times, each path in
turn (which goes first alternates from run to run):

1. **Synthesis**: ``POST /v1/audio/speech`` of a fixed three-sentence text as wav, through
   the gateway and directly at the worker; the wall time from the request to the last byte,
   and the audio's duration (decoded with PyAV).
2. **Transcription**: ``POST /v1/audio/transcriptions`` of that audio (the gateway's
   synthesis of the run), through the gateway and directly.

The real-time factor is audio seconds / wall seconds (higher is faster); the report gives
each path's median, and the gateway's median over the direct one. Last, the worker's
/proc/PID/status (VmRSS, VmHWM) after the runs.

**Time to first audio** (``ttfa``): per TTS engine (``--engines``, default hibari and
piper), a speech model ``voice-ENGINE`` (``tts: ENGINE`` only) and a persona
``says-ENGINE: {use: chat, voice: voice-ENGINE}``, whose ``chat`` model is
tests/slow_upstream.py (``engine: command``) streaming the fixed reply ``REPLY`` in 8-char
chunks ``--gap`` seconds apart (the stub, not an LLM: what is measured is the gateway's
pipeline). One warm-up of each path, then ``--ttfa-runs`` times, the three paths in turn
(the order rotates from run to run):

1. **Persona**: ``POST /v1/personas/says-ENGINE/speak`` with ``messages`` and
   ``stream_format: sse``, read to the end. The client feeds each ``text.delta`` to the
   gateway's own sentence cutter (``modelyard.sentences.SentenceCutter``); the delta on which
   it yields its first sentence (``FIRST``: the one that carries the white space after
   "on.") is when the first sentence is complete. TTFA is from the arrival of that event to
   the arrival of the first ``speech.audio.delta`` event, both on the client.
2. **Gateway**: ``POST /v1/audio/speech`` of ``FIRST`` (wav) to ``voice-ENGINE`` through
   the gateway: from the request to the first byte of PCM (past the WAV header).
3. **Direct**: the same at the worker itself.

Each reported as median, p90 and range (milliseconds). 2 and 3 are the breakdown: what the
engine takes to the first sample of that sentence, and what a speech request through the
gateway adds. For context, the persona's times from the request to the first sentence
whole and to the first audio delta too (these depend on ``--gap``; TTFA hardly does).

    .venv/bin/python bench/speech.py [--runs 5] [--threads 2] [--ttfa-runs 20] [--gap 0.05]
                                     [--engines hibari,piper] [--only rtf|ttfa]

About a minute. Report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import GatewayProcess, command_model, python, start_gateway, write_config
from harness import REPO, Running, free_port, log
from procfs import status

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "She sells seashells by the seashore, and the shells she sells are surely seashells. "
    "A gateway in front of a speech engine should cost almost nothing."
)
MODEL = "speech"
# What the persona says while it thinks: its first sentence short and ordinary.
REPLY = "The kettle is on. Your tea will be ready in four minutes. Shall I bring biscuits?"
FIRST = "The kettle is on."
VOICES = {"hibari": "heart", "piper": "joe"}  # each engine's one voice
SLOW_UPSTREAM = REPO / "tests" / "slow_upstream.py"


def speech_model(threads: int) -> str:
    """The config block of the one speech model."""
    return (
        f"    engine: speech\n    tts: hibari\n    stt: whisper-tiny.en\n"
        f"    threads: {threads}\n    start_timeout: 180s\n"
    )


def voice_model(engine: str) -> str:
    """The config block of a text-to-speech-only model on ``engine``."""
    return f"    engine: speech\n    tts: {engine}\n    start_timeout: 180s\n"


def chat_model(reply: Path) -> str:
    """The config block of the stub chat model that streams ``reply``'s text."""
    command = [python(), str(SLOW_UPSTREAM), "--port", "{port}", "--reply", f"@{reply}"]
    return command_model(command, 4, 10)


def duration(data: bytes) -> float:
    """Seconds of audio in ``data`` (any container PyAV reads), counted from its samples."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return float(samples / stream.rate)


def synthesise(client: Any, base: str) -> tuple[bytes, float]:
    """The wav of ``TEXT`` from ``base`` (ending in /v1) and the seconds to its last byte."""
    body = {"model": MODEL, "voice": "heart", "input": TEXT, "response_format": "wav"}
    began = time.perf_counter()
    resp = client.post(base + "/audio/speech", json=body)
    data: bytes = resp.content
    wall = time.perf_counter() - began
    resp.raise_for_status()
    return data, wall


def transcribe(client: Any, base: str, audio: bytes) -> tuple[str, float]:
    """The text of ``audio`` from ``base`` (ending in /v1) and the seconds to the answer."""
    began = time.perf_counter()
    resp = client.post(
        base + "/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("speech.wav", audio, "audio/wav")},
    )
    resp.read()
    wall = time.perf_counter() - began
    resp.raise_for_status()
    return str(resp.json()["text"]), wall


def ratio(gateway: float, direct: float) -> str:
    return f"{gateway / direct:.3f} ({(gateway / direct - 1) * 100:+.1f} %)"


# --------------------------------------------------------------------------- real-time factors


def real_time_factors(client: Any, gw: GatewayProcess, runs: int, threads: int) -> None:
    """The first part: warm ``speech``, ``runs`` runs of each path, the report on stdout."""
    gateway_v1 = gw.base + "/v1"
    tts: dict[str, list[float]] = {"gateway": [], "direct": []}
    stt: dict[str, list[float]] = {"gateway": [], "direct": []}
    walls: dict[str, list[float]] = {"tts gateway": [], "tts direct": [],
                                     "stt gateway": [], "stt direct": []}  # fmt: skip
    texts: list[str] = []
    log("warming: the gateway starts the worker")
    began = time.monotonic()
    audio, _ = synthesise(client, gateway_v1)
    transcribe(client, gateway_v1, audio)
    log(f"warm in {time.monotonic() - began:.1f} s")
    model = gw.model(MODEL)
    direct_v1 = str(model["upstream"]).rstrip("/")
    pid = int(model["pid"])
    log(f"worker pid {pid} at {direct_v1}")
    paths = {"gateway": gateway_v1, "direct": direct_v1}
    for run in range(runs):
        order = ["gateway", "direct"] if run % 2 == 0 else ["direct", "gateway"]
        spoken: dict[str, bytes] = {}
        for path in order:
            data, wall = synthesise(client, paths[path])
            spoken[path] = data
            tts[path].append(duration(data) / wall)
            walls[f"tts {path}"].append(wall)
        audio = spoken["gateway"]
        seconds = duration(audio)
        for path in order:
            text, wall = transcribe(client, paths[path], audio)
            texts.append(text)
            stt[path].append(seconds / wall)
            walls[f"stt {path}"].append(wall)
        log(
            f"run {run + 1}: {seconds:.2f} s of audio; TTS RTF gateway "
            f"{tts['gateway'][-1]:.1f}, direct {tts['direct'][-1]:.1f}; STT RTF "
            f"gateway {stt['gateway'][-1]:.1f}, direct {stt['direct'][-1]:.1f}"
        )
    seconds = duration(audio)
    memory = status(pid)

    print(
        f"{runs} runs, STT threads {threads}; text of {len(TEXT)} characters, "
        f"{seconds:.2f} s of wav audio (24 kHz); medians\n"
    )
    print("| | gateway | direct | gateway / direct |")
    print("| --- | ---: | ---: | ---: |")
    for name, rtf in (("synthesis (wav)", tts), ("transcription", stt)):
        g, d = statistics.median(rtf["gateway"]), statistics.median(rtf["direct"])
        print(f"| {name}: real-time factor | {g:.1f}x | {d:.1f}x | {ratio(g, d)} |")
        key = "tts" if rtf is tts else "stt"
        gw_ms = statistics.median(walls[f"{key} gateway"]) * 1000
        d_ms = statistics.median(walls[f"{key} direct"]) * 1000
        print(f"| {name}: wall time | {gw_ms:.0f} ms | {d_ms:.0f} ms | {ratio(gw_ms, d_ms)} |")
    print(
        f"\nworker RSS after the runs: {memory.get('VmRSS', 0) / 2**20:.0f} MiB "
        f"(peak {memory.get('VmHWM', 0) / 2**20:.0f} MiB, {memory.get('Threads', 0)} threads)"
    )
    print(f"last transcript: {texts[-1]!r}" if texts else "")


# --------------------------------------------------------------------------- time to first audio


@dataclass(frozen=True)
class Spoken:
    """One persona reply, timed on the client (seconds from the request)."""

    complete: float  # the text.delta on which the first sentence was whole arrived
    audio: float  # the first speech.audio.delta arrived
    done: float  # the done event arrived

    @property
    def ttfa(self) -> float:
        return self.audio - self.complete


def speak(client: Any, base: str, persona: str, gap: float) -> Spoken:
    """The persona's spoken reply as SSE, read to the end, timed."""
    from modelyard.sentences import SentenceCutter

    body = {
        "messages": [{"role": "user", "content": "Could I have a cup of tea?"}],
        "stream_format": "sse",
        "stub": {"gap": gap},  # to the chat: seconds between the stub's 8-char chunks
    }
    cutter = SentenceCutter()
    complete = audio = done = None
    text: list[str] = []
    began = time.perf_counter()
    with client.stream("POST", f"{base}/v1/personas/{persona}/speak", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{persona}: {resp.status_code} {resp.read()[:300]!r}")
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter() - began
            event = json.loads(line[6:])
            kind = event["type"]
            if kind == "text.delta":
                text.append(event["delta"])
                if complete is None and (said := cutter.feed(event["delta"])):
                    if said[0] != FIRST:
                        raise RuntimeError(f"the first sentence came as {said[0]!r}")
                    complete = now
            elif kind == "speech.audio.delta" and audio is None:
                audio = now
            elif kind == "done":
                done = now
            elif kind == "error":
                raise RuntimeError(f"{persona}: {event}")
    if complete is None or audio is None or done is None or "".join(text) != REPLY:
        raise RuntimeError(f"{persona}: an incomplete reply ({complete}, {audio}, {done})")
    return Spoken(complete, audio, done)


def ttfa(client: Any, base: str, persona: str, gap: float, into: list[Spoken]) -> float:
    """``speak``'s TTFA; the whole timing appended to ``into``."""
    spoken = speak(client, base, persona, gap)
    into.append(spoken)
    return spoken.ttfa


def first_pcm(client: Any, base: str, model: str, voice: str) -> float:
    """Seconds from a request for ``FIRST`` as wav at ``base`` (ending in /v1) to the first
    byte of PCM past the WAV header; the answer is read to its end."""
    from modelyard.wav import WavReader

    body = {"model": model, "voice": voice, "input": FIRST, "response_format": "wav"}
    reader = WavReader()
    first: float | None = None
    began = time.perf_counter()
    with client.stream("POST", base + "/audio/speech", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{base}: {resp.status_code} {resp.read()[:300]!r}")
        for chunk in resp.iter_raw():
            if first is None and reader.feed(chunk):
                first = time.perf_counter() - began
    if first is None:
        raise RuntimeError(f"{base}: no audio for {FIRST!r}")
    return first


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def first_audio(client: Any, gw: GatewayProcess, engines: list[str], runs: int, gap: float) -> None:
    """The second part: per engine, a warm-up and ``runs`` runs of the three paths."""
    print(
        f"\nTime to first audio: {runs} runs per engine after one warm-up; the stub streams "
        f"{REPLY!r} in 8-char chunks {gap * 1000:.0f} ms apart; first sentence {FIRST!r}\n"
    )
    print("| engine | measure | median | p90 | min to max |")
    print("| --- | --- | ---: | ---: | ---: |")
    summary: list[str] = []
    for engine in engines:
        voice, model, persona = VOICES[engine], f"voice-{engine}", f"says-{engine}"
        log(f"{engine}: warming (the gateway starts the stub and the voice)")
        began = time.monotonic()
        speak(client, gw.base, persona, gap)
        direct_v1 = str(gw.model(model)["upstream"]).rstrip("/")
        spoken: list[Spoken] = []
        paths: dict[str, Callable[[], float]] = {
            "persona": partial(ttfa, client, gw.base, persona, gap, spoken),
            "gateway": partial(first_pcm, client, gw.base + "/v1", model, voice),
            "direct": partial(first_pcm, client, direct_v1, model, voice),
        }
        for measure in paths.values():
            measure()
        spoken.clear()
        log(f"{engine}: warm in {time.monotonic() - began:.1f} s; worker at {direct_v1}")
        times: dict[str, list[float]] = {path: [] for path in paths}
        order = list(paths)
        for run in range(runs):
            turn = order[run % 3 :] + order[: run % 3]
            for path in turn:
                times[path].append(paths[path]() * 1000)
            log(
                f"{engine} run {run + 1}: TTFA {times['persona'][-1]:.0f} ms; first PCM "
                f"gateway {times['gateway'][-1]:.0f} ms, direct {times['direct'][-1]:.0f} ms"
            )
        names = {
            "persona": "TTFA: first sentence whole → first audio delta (persona, SSE)",
            "gateway": "first PCM byte, `/v1/audio/speech` through the gateway",
            "direct": "first PCM byte, `/v1/audio/speech` at the worker",
        }
        times["request"] = [s.audio * 1000 for s in spoken]
        times["complete"] = [s.complete * 1000 for s in spoken]
        names["complete"] = "request → first sentence whole (persona, SSE)"
        names["request"] = "request → first audio delta (persona, SSE)"
        for path, name in names.items():
            ms = times[path]
            print(
                f"| {engine} | {name} | {statistics.median(ms):.0f} ms | {p90(ms):.0f} ms | "
                f"{min(ms):.0f} to {max(ms):.0f} ms |"
            )
        median, direct = statistics.median(times["persona"]), statistics.median(times["direct"])
        worst = p90(times["persona"])
        summary.append(
            f"{engine}: median TTFA {median:.0f} ms, of which the engine's own first PCM "
            f"{direct:.0f} ms and the rest {median - direct:.0f} ms; under 300 ms: median "
            f"{'yes' if median < 300 else 'NO'}, p90 {'yes' if worst < 300 else 'NO'}"
        )
    print("\n" + "\n".join(summary))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="RTF runs of each path (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="STT threads (default 2)")
    parser.add_argument("--ttfa-runs", type=int, default=20, help="TTFA runs (default 20)")
    parser.add_argument(
        "--gap", type=float, default=0.05, help="seconds between the stub's chunks (0.05)"
    )
    parser.add_argument(
        "--engines", default="hibari,piper", help="TTS engines for TTFA (hibari,piper)"
    )
    parser.add_argument("--only", choices=("rtf", "ttfa"), help="one part only")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if unknown := set(engines) - set(VOICES):
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")
    if args.ttfa_runs < 2 and args.only != "rtf":
        parser.error("--ttfa-runs must be at least 2")
    import httpx

    running = Running(grace=30)
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-speech-"))
    port = free_port()
    reply = tmp / "reply.txt"
    reply.write_text(REPLY, encoding="utf-8")
    models = {MODEL: speech_model(args.threads), "chat": chat_model(reply)}
    models |= {f"voice-{engine}": voice_model(engine) for engine in engines}
    personas = "".join(
        f"  says-{engine}: {{use: chat, voice: voice-{engine}}}\n" for engine in engines
    )
    config = write_config(tmp, port, models, "personas:\n" + personas if personas else "")
    try:
        gw = start_gateway(running, config, port, tmp / "gateway.log")
        with httpx.Client(timeout=300) as client:
            if args.only != "ttfa":
                real_time_factors(client, gw, args.runs, args.threads)
            if args.only != "rtf":
                first_audio(client, gw, engines, args.ttfa_runs, args.gap)
    finally:
        running.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
