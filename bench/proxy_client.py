"""Which HTTP client should the gateway use upstream: aiohttp or httpx? Measure it.

Starts bench/upstream_stub.py, and one minimal Starlette proxy per client (uvicorn, one worker,
in its own process, loopback, free port) that POSTs the body upstream and hands the answer back
unchanged: a streamed answer through ``StreamingResponse`` over ``resp.content.iter_any()``
(aiohttp) or ``resp.aiter_raw()`` (httpx); a plain answer read whole and returned, as
src/modelyard/gateway/proxy.py does. Each target (the stub direct, proxy-aiohttp, proxy-httpx)
is then loaded by an aiohttp load generator in a separate process, round after round, the
targets' order rotated each round:

* non-stream at concurrency 1 and 32: requests/s, median and p99 latency;
* stream at concurrency 64: median time to first body bytes, and SSE chunks/s.

It also reads each server process's CPU time from /proc, so that a proxy's cost per request
can be told apart from what the load generator, on the same cores, allowed.

    python bench/proxy_client.py [--duration 5] [--rounds 2] [--chunks 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from harness import (
    CHAT,
    Running,
    chat_body,
    listening_socket,
    post,
    proxy_role,
    spawn_serving,
    start_stub,
    wait_http,
)
from procfs import cpu_seconds
from report import fmt, machine, ratio, row, times, versions

CLIENTS = ("aiohttp", "httpx")
TARGETS = ("direct", "proxy-aiohttp", "proxy-httpx")
# Hop-by-hop and length headers belong to the proxy's own server, as in the gateway.
DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


# --------------------------------------------------------------------------- the proxy


def make_proxy_app(client: str, upstream: str) -> Any:
    """A Starlette app forwarding POST /v1/chat/completions to ``upstream`` with ``client``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    url = upstream + CHAT
    send_headers = {"Content-Type": "application/json"}

    def keep(items: Iterator[tuple[str, str]]) -> dict[str, str]:
        return {k: v for k, v in items if k.lower() not in DROP}

    if client == "aiohttp":
        import aiohttp

        holder: dict[str, aiohttp.ClientSession] = {}

        async def chat_aiohttp(request: Request) -> Response:
            body = await request.body()
            resp = await holder["s"].post(url, data=body, headers=send_headers)
            headers = keep(iter(resp.headers.items()))
            if resp.content_type == "text/event-stream":

                async def relay() -> AsyncIterator[bytes]:
                    try:
                        async for chunk in resp.content.iter_any():
                            yield chunk
                    finally:
                        resp.release()

                return StreamingResponse(relay(), status_code=resp.status, headers=headers)
            data = await resp.read()
            resp.release()
            return Response(data, status_code=resp.status, headers=headers)

        @contextlib.asynccontextmanager
        async def lifespan_aiohttp(app: Starlette) -> AsyncIterator[None]:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            ) as session:
                holder["s"] = session
                yield

        routes = [Route(CHAT, chat_aiohttp, methods=["POST"])]
        return Starlette(routes=routes, lifespan=lifespan_aiohttp)

    if client == "httpx":
        import httpx

        hx: dict[str, httpx.AsyncClient] = {}

        async def chat_httpx(request: Request) -> Response:
            body = await request.body()
            client = hx["c"]
            req = client.build_request("POST", url, content=body, headers=send_headers)
            resp = await client.send(req, stream=True)
            headers = keep(iter(resp.headers.items()))
            if resp.headers.get("content-type", "").startswith("text/event-stream"):

                async def relay() -> AsyncIterator[bytes]:
                    try:
                        async for chunk in resp.aiter_raw():
                            yield chunk
                    finally:
                        await resp.aclose()

                return StreamingResponse(relay(), status_code=resp.status_code, headers=headers)
            data = await resp.aread()
            await resp.aclose()
            return Response(data, status_code=resp.status_code, headers=headers)

        @contextlib.asynccontextmanager
        async def lifespan_httpx(app: Starlette) -> AsyncIterator[None]:
            limits = httpx.Limits(
                max_connections=None, max_keepalive_connections=None, keepalive_expiry=30
            )
            async with httpx.AsyncClient(limits=limits, timeout=None) as client:
                hx["c"] = client
                yield

        routes = [Route(CHAT, chat_httpx, methods=["POST"])]
        return Starlette(routes=routes, lifespan=lifespan_httpx)

    raise ValueError(f"unknown client {client!r}")


def run_proxy(argv: list[str]) -> None:
    """Internal role: serve one proxy on an inherited listening socket."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="proxy_client.py _proxy")
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    config = uvicorn.Config(
        make_proxy_app(args.client, args.upstream),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=30,
    )
    uvicorn.Server(config).run(sockets=[sock])


# --------------------------------------------------------------------------- the load generator


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    chunks: int = 0
    latency_ms: list[float] = field(default_factory=list)
    ttfc_ms: list[float] = field(default_factory=list)
    cpu_window_s: float = 0.0  # from the window's start to the last answer
    loadgen_cpu_s: float = 0.0
    stub_cpu_s: float = 0.0
    proxy_cpu_s: float = 0.0
    first_error: str | None = None


async def generate_load(
    url: str,
    *,
    stream: bool,
    concurrency: int,
    warmup: float,
    duration: float,
    max_requests: int,
    chunks: int,
    stub_pid: int,
    proxy_pid: int | None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight; record those started inside the window.

    The CPU time of this process, the stub and the proxy is read over the same window.
    """
    import aiohttp

    body = chat_body(stream)
    headers = {"Content-Type": "application/json"}
    done_marker = b"data: [DONE]\n\n"
    result = LoadResult()
    issued = 0
    last_end = 0.0
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=30)
    t_start = time.perf_counter() + warmup
    t_stop = t_start + duration

    async def one(session: aiohttp.ClientSession) -> tuple[float | None, int]:
        """One request: (time to first body bytes, SSE events); raises on a wrong answer."""
        t0 = time.perf_counter()
        first: float | None = None
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            if not stream:
                data = await resp.read()
                if not data.startswith(b"{"):
                    raise RuntimeError("not a JSON answer")
                return None, 0
            events = 0
            prev_nl = False
            tail = b""
            async for chunk in resp.content.iter_any():
                if first is None:
                    first = time.perf_counter() - t0
                events += chunk.count(b"\n\n") + (prev_nl and chunk[:1] == b"\n")
                prev_nl = chunk[-1:] == b"\n"
                tail = (tail + chunk)[-len(done_marker) :]
        if events != chunks + 1 or tail != done_marker:
            raise RuntimeError(f"stream had {events} events, ending {tail!r}")
        return first, events - 1

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued, last_end
        while True:
            t0 = time.perf_counter()
            if t0 >= t_stop or issued >= max_requests:
                return
            counted = t0 >= t_start
            if counted:
                issued += 1
            try:
                first, events = await one(session)
            except Exception as exc:
                result.errors += 1
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"
                continue
            t1 = time.perf_counter()
            if counted:
                result.requests += 1
                result.latency_ms.append((t1 - t0) * 1e3)
                if first is not None:
                    result.ttfc_ms.append(first * 1e3)
                result.chunks += events
                last_end = max(last_end, t1)

    def cpu() -> tuple[float, float, float, float]:
        proxy = cpu_seconds(proxy_pid) if proxy_pid else 0.0
        return time.perf_counter(), time.process_time(), cpu_seconds(stub_pid), proxy

    async def sample_at_start() -> tuple[float, float, float, float]:
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        return cpu()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample_at_start())
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        before = await sampler
    after = cpu()
    result.cpu_window_s, result.loadgen_cpu_s, result.stub_cpu_s, result.proxy_cpu_s = (
        b - a for a, b in zip(before, after, strict=True)
    )
    result.elapsed = max(last_end - t_start, 1e-9)
    return result


def run_loadgen(argv: list[str]) -> None:
    """Internal role: one load measurement, its result as JSON on stdout."""
    import uvloop

    parser = argparse.ArgumentParser(prog="proxy_client.py _loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--max-requests", type=int, required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--stub-pid", type=int, required=True)
    parser.add_argument("--proxy-pid", type=int)
    args = parser.parse_args(argv)
    result = uvloop.run(
        generate_load(
            args.url,
            stream=args.stream,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            max_requests=args.max_requests,
            chunks=args.chunks,
            stub_pid=args.stub_pid,
            proxy_pid=args.proxy_pid,
        )
    )
    json.dump(result.__dict__, sys.stdout)


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class Phase:
    name: str
    stream: bool
    concurrency: int


@dataclass
class Sample(LoadResult):
    """One phase on one target, pooled over the rounds."""

    def add(self, r: dict[str, Any]) -> None:
        self.requests += r["requests"]
        self.errors += r["errors"]
        self.elapsed += r["elapsed"]
        self.chunks += r["chunks"]
        self.latency_ms += r["latency_ms"]
        self.ttfc_ms += r["ttfc_ms"]
        self.loadgen_cpu_s += r["loadgen_cpu_s"]
        self.proxy_cpu_s += r["proxy_cpu_s"]
        self.stub_cpu_s += r["stub_cpu_s"]
        self.cpu_window_s += r["cpu_window_s"]
        self.first_error = self.first_error or r["first_error"]

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.elapsed if self.elapsed else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def measure(
    url: str, phase: Phase, args: argparse.Namespace, stub_pid: int, proxy_pid: int | None
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_loadgen",
        "--url",
        url,
        "--concurrency",
        str(phase.concurrency),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--max-requests",
        str(args.max_requests),
        "--chunks",
        str(args.chunks),
    ]
    if phase.stream:
        cmd.append("--stream")
    cmd += ["--stub-pid", str(stub_pid)]
    if proxy_pid is not None:
        cmd += ["--proxy-pid", str(proxy_pid)]
    out = subprocess.run(
        cmd, check=True, capture_output=True, timeout=args.warmup + args.duration + 60
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def environment() -> list[str]:
    libs = versions(("aiohttp", "httpx", "httpcore", "starlette", "uvicorn", "uvloop", "httptools"))
    return [f"- machine: {machine()}", f"- python {platform.python_version()}; {libs}"]


def report(samples: dict[tuple[str, str], Sample], phases: list[Phase], chunks: int) -> str:
    ns1, ns32, st = phases
    cols = [
        "target",
        f"c={ns1.concurrency} req/s",
        f"c={ns1.concurrency} p50 ms",
        f"c={ns1.concurrency} p99 ms",
        f"c={ns32.concurrency} req/s",
        f"c={ns32.concurrency} p50 ms",
        f"c={ns32.concurrency} p99 ms",
        f"stream c={st.concurrency} TTFC p50 ms",
        f"stream c={st.concurrency} chunks/s",
        "errors",
    ]

    def metrics(target: str) -> list[float]:
        a, b, c = (samples[(target, p.name)] for p in phases)
        return [
            a.rps,
            pct(a.latency_ms, 0.5),
            pct(a.latency_ms, 0.99),
            b.rps,
            pct(b.latency_ms, 0.5),
            pct(b.latency_ms, 0.99),
            pct(c.ttfc_ms, 0.5),
            c.chunks_per_s,
        ]

    digits = [0, 2, 2, 0, 2, 2, 2, 0]
    values = {t: metrics(t) for t in TARGETS}
    lines = [row(cols), "|" + "---|" * len(cols)]
    for t in TARGETS:
        errors = sum(samples[(t, p.name)].errors for p in phases)
        cells = [fmt(v, d) for v, d in zip(values[t], digits, strict=True)]
        lines.append(row([t, *cells, str(errors)]))
    for t in TARGETS[1:]:
        cells = [times(ratio(v, d)) for v, d in zip(values[t], values["direct"], strict=True)]
        lines.append(row([f"{t} ÷ direct", *cells]) + " |")  # an empty errors cell
    pairs = zip(values["proxy-aiohttp"], values["proxy-httpx"], strict=True)
    cells = [times(ratio(a, h)) for a, h in pairs]
    lines.append(row(["proxy-aiohttp ÷ proxy-httpx", *cells]) + " |")

    lines += [
        "",
        "CPU per process while loaded (% of one core over the phase; proxy µs per request):",
        "",
        "| phase | target | proxy core % | proxy µs/req | stub core % | load-gen core % |",
        "|---|---|---|---|---|---|",
    ]
    for p in phases:
        for t in TARGETS:
            s = samples[(t, p.name)]
            wall = s.cpu_window_s or 1e-9
            proxy = "—" if t == "direct" else fmt(100 * s.proxy_cpu_s / wall)
            per_req = (
                "—" if t == "direct" or not s.requests else fmt(1e6 * s.proxy_cpu_s / s.requests)
            )
            lines.append(
                f"| {p.name} | {t} | {proxy} | {per_req} | {fmt(100 * s.stub_cpu_s / wall)} "
                f"| {fmt(100 * s.loadgen_cpu_s / wall)} |"
            )
    lines += [
        "",
        "Requests counted: "
        + "; ".join(
            f"{p.name}: " + ", ".join(f"{t} {samples[(t, p.name)].requests}" for t in TARGETS)
            for p in phases
        )
        + f". Each stream is {chunks} chunks + [DONE].",
    ]
    firsts = {k: s.first_error for k, s in samples.items() if s.first_error}
    for (t, pn), err in firsts.items():
        lines.append(f"First error, {t} {pn}: {err}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> None:
    phases = [
        Phase(f"non-stream c={args.concurrency_low}", False, args.concurrency_low),
        Phase(f"non-stream c={args.concurrency_high}", False, args.concurrency_high),
        Phase(f"stream c={args.stream_concurrency}", True, args.stream_concurrency),
    ]
    running = Running(grace=5)
    try:
        stub, stub_url = start_stub(running, args.chunks)
        urls = {"direct": stub_url}
        procs = {"direct": stub}
        for client in CLIENTS:
            sock = listening_socket()
            urls[f"proxy-{client}"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
            procs[f"proxy-{client}"] = running.add(
                spawn_serving(proxy_role(client, stub_url), sock)
            )
        for t in TARGETS:
            wait_http(urls[t] + CHAT, procs[t], within=30, body=chat_body(False))
        # The proxies must hand back exactly the stub's bytes.
        for stream in (False, True):
            want = post(stub_url + CHAT, chat_body(stream))
            for t in TARGETS[1:]:
                got = post(urls[t] + CHAT, chat_body(stream))
                if got != want:
                    raise RuntimeError(f"{t} changed the {'stream' if stream else 'answer'}")

        print(
            f"# {len(TARGETS)} targets x {len(phases)} phases x {args.rounds} rounds, "
            f"{args.warmup}s warm-up + {args.duration}s each",
            file=sys.stderr,
        )
        samples = {(t, p.name): Sample() for t in TARGETS for p in phases}
        t_all = time.perf_counter()
        for rnd in range(args.rounds):
            order = TARGETS[rnd % len(TARGETS) :] + TARGETS[: rnd % len(TARGETS)]
            for p in phases:
                for t in order:
                    proxy_pid = None if t == "direct" else procs[t].pid
                    r = measure(urls[t] + CHAT, p, args, stub.pid, proxy_pid)
                    samples[(t, p.name)].add(r)
                    print(
                        f"round {rnd + 1} {p.name:<16} {t:<14} {r['requests'] / r['elapsed']:>9.0f}"
                        f" req/s  errors {r['errors']}",
                        file=sys.stderr,
                    )
        print(f"# measured in {time.perf_counter() - t_all:.0f}s", file=sys.stderr)
    finally:
        running.stop_all()

    print("\n".join(environment()))
    print(
        f"- {args.rounds} rounds x ({args.warmup}s warm-up + {args.duration}s) per target and "
        f"phase, target order rotated each round; {args.chunks} SSE chunks per stream"
    )
    print()
    print(report(samples, phases, args.chunks))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_proxy":
        run_proxy(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        run_loadgen(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not counted first")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all targets")
    parser.add_argument("--chunks", type=int, default=32, help="SSE chunks per stream")
    parser.add_argument("--concurrency-low", type=int, default=1)
    parser.add_argument("--concurrency-high", type=int, default=32)
    parser.add_argument("--stream-concurrency", type=int, default=64)
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="cap per target, phase and round"
    )
    args = parser.parse_args()
    run_bench(args)


if __name__ == "__main__":
    main()
