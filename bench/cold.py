"""The cold-start method of bench/cold_start.py, which bench/compare.py uses too.

Direct: spawn llama-server, poll /health every 5 ms until 200 (start-to-ready), then stream one
chat request and time its first content token. Through modelyard: a model set up with the same
file and flags (``cold_model``), stopped, then the same streamed request timed from the moment
it is sent. The difference is what modelyard adds to a cold start.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import CHAT, PROMPT, free_port, launch, stop_process

BODY = {
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": 4,
    "stream": True,
}
# llama-server's flags when started directly; ``cold_model`` gives modelyard the same ones.
ARGS = ["-c", "1024", "--threads", "2", "--parallel", "1"]


def cold_model(weights: Path, swap_group: str | None = None) -> str:
    """The config of a model set up as ``ARGS`` start llama-server (a block under ``models``)."""
    block = f"    engine: llama.cpp\n    weights: {weights}\n    context: 1024\n    parallel: 1\n"
    block += "    args: [--threads, '2']\n"
    return block + (f"    swap_group: {swap_group}\n" if swap_group else "")


def first_token(url: str, model: str) -> float:
    """Seconds from sending a streamed chat request to its first content chunk."""
    began = time.perf_counter()
    with httpx.stream("POST", url, json={**BODY, "model": model}, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - began
    raise RuntimeError("no content in the stream")


def direct(binary: str, weights: Path) -> tuple[float, float]:
    """llama-server on ``weights`` started here: (start-to-ready, first token after ready) s."""
    port = free_port()
    began = time.perf_counter()
    argv = [binary, "-m", str(weights), "--port", str(port), "--host", "127.0.0.1", *ARGS]
    proc = launch(argv, None)
    try:
        # The measured wait itself: a 5 ms poll, so that start-to-ready is read closely.
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
        ready = time.perf_counter() - began
        ttft = first_token(f"http://127.0.0.1:{port}{CHAT}", "x")
        return ready, ttft
    finally:
        stop_process(proc, 30)


@dataclass
class Streamed:
    status: int
    first_token_s: float | None
    instance: str | None
    error: str | None = None


def streamed_first_token(url: str, model: str, barrier: threading.Barrier | None) -> Streamed:
    """One streamed chat request (``BODY``): status, first token, instance; never raises on
    the answer, so that requests sent together all report."""
    if barrier is not None:
        barrier.wait()
    began = time.perf_counter()
    try:
        with httpx.stream("POST", url, json={**BODY, "model": model}, timeout=300) as resp:
            instance = resp.headers.get("x-modelyard-instance")
            if resp.status_code != 200:
                resp.read()
                return Streamed(resp.status_code, None, instance, resp.text[:200])
            first = None
            for line in resp.iter_lines():
                if first is None and line.startswith("data: ") and '"content":"' in line:
                    first = time.perf_counter() - began
            return Streamed(200, first, instance)
    except httpx.HTTPError as exc:
        return Streamed(0, None, None, f"{type(exc).__name__}: {exc}")
