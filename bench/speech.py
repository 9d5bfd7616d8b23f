"""Speech through the gateway against the worker called directly: real-time factors, and
the worker's memory (issue 14).

Starts ``modelyard serve`` on a throwaway config with one speech model, ``speech``
(``engine: speech``, ``tts: hibari``, ``stt: whisper-tiny.en``, ``--threads`` STT threads),
warms it with one synthesis and one transcription through the gateway, and reads the
worker's own URL (``upstream``) and pid from ``GET /admin/models``. Then ``--runs`` times,
each path in turn (which goes first alternates from run to run):

1. **Synthesis**: ``POST /v1/audio/speech`` of a fixed three-sentence text as wav, through
   the gateway and directly at the worker; the wall time from the request to the last byte,
   and the audio's duration (decoded with PyAV).
2. **Transcription**: ``POST /v1/audio/transcriptions`` of that audio (the gateway's
   synthesis of the run), through the gateway and directly.

The real-time factor is audio seconds / wall seconds (higher is faster); the report gives
each path's median, and the gateway's median over the direct one. Last, the worker's
/proc/PID/status (VmRSS, VmHWM) after the runs.

    .venv/bin/python bench/speech.py [--runs 5] [--threads 2]

About a minute. Report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import start_gateway, write_config
from harness import Running, free_port, log
from procfs import status

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "She sells seashells by the seashore, and the shells she sells are surely seashells. "
    "A gateway in front of a speech engine should cost almost nothing."
)
MODEL = "speech"


def speech_model(threads: int) -> str:
    """The config block of the one speech model."""
    return (
        f"    engine: speech\n    tts: hibari\n    stt: whisper-tiny.en\n"
        f"    threads: {threads}\n    start_timeout: 180s\n"
    )


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each path (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="STT threads (default 2)")
    args = parser.parse_args()
    import httpx

    running = Running(grace=30)
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-speech-"))
    port = free_port()
    config = write_config(tmp, port, {MODEL: speech_model(args.threads)})
    tts: dict[str, list[float]] = {"gateway": [], "direct": []}
    stt: dict[str, list[float]] = {"gateway": [], "direct": []}
    walls: dict[str, list[float]] = {"tts gateway": [], "tts direct": [],
                                     "stt gateway": [], "stt direct": []}  # fmt: skip
    texts: list[str] = []
    try:
        gw = start_gateway(running, config, port, tmp / "gateway.log")
        gateway_v1 = gw.base + "/v1"
        with httpx.Client(timeout=300) as client:
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
            for run in range(args.runs):
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
    finally:
        running.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"{args.runs} runs, STT threads {args.threads}; text of {len(TEXT)} characters, "
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
