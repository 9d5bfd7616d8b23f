"""Soak: the gateway's memory, file descriptors, threads and slots over many requests.

Starts a real ``modelyard serve`` (its own process, a temporary config and state dir) with one
``command`` model, ``stub``, served by bench/upstream_stub.py (16 SSE chunks per stream;
``slots: 16``, ``queue: 100``), then drives ``--requests`` requests through it with aiohttp on
uvloop at ``--concurrency``, in a fixed mix chosen by request index (the same every run):

  stream          70 %  streamed chat completion, read to ``data: [DONE]``   expect 200
  plain           15 %  non-streamed chat completion                         expect 200
  abandon-stream   5 %  streamed, closed by the client after the first chunk expect 200
  malformed        4 %  a body that is not JSON                              expect 400
  unknown          3 %  a model that does not exist                          expect 404
  abandon-plain    3 %  non-streamed, cancelled by the client after 1-5 ms   any outcome

The gateway's VmRSS, open fds and threads, and the stub engine's VmRSS, are read from /proc
after a warm-up of 1,000 requests, then every 2,000 requests, and at the end. Then: the slot
audit (``GET /admin/models``: ``in_flight`` and ``waiting`` of ``stub`` back to 0), the row
counts of the ``requests`` and ``decisions`` tables of the state dir's ``modelyard.db`` (read
beside the running gateway, then again after it stopped: it writes its buffered rows as it
stops), and SIGTERM (the gateway must exit and take the engine with it). Prints markdown
tables; exits 1 if a kind got an outcome it should not, the slot audit fails, or the shutdown
is not clean. A gateway RSS growth over 1 KiB/request after the warm-up is noted, not failed.

    .venv/bin/python bench/soak.py [--requests 20000] [--concurrency 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import (
    MESSAGES,
    GatewayProcess,
    count_rows,
    launch_gateway,
    stop_gateway,
    write_stub_config,
)
from harness import free_port
from procfs import cpu_seconds, open_fds, parent_of, status
from report import MiB, mib

CHUNKS = 16
SLOTS = 16
WARMUP = 1_000
EVERY = 2_000

# Per 100 requests; shuffled once with a fixed seed so the kinds interleave the same every run.
MIX = {
    "stream": 70,
    "plain": 15,
    "abandon-stream": 5,
    "malformed": 4,
    "unknown": 3,
    "abandon-plain": 3,
}
EXPECTED: dict[str, set[str] | None] = {
    "stream": {"200"},
    "plain": {"200"},
    "abandon-stream": {"200"},
    "malformed": {"400"},
    "unknown": {"404"},
    "abandon-plain": None,  # whatever happens first: an answer or the client's cancel
}


def pattern() -> list[str]:
    kinds = [kind for kind, share in MIX.items() for _ in range(share)]
    random.Random(20_000).shuffle(kinds)
    return kinds


@dataclass
class Sample:
    done: int
    elapsed_s: float
    gateway_rss: int
    gateway_hwm: int
    gateway_fds: int
    gateway_threads: int
    gateway_cpu_s: float
    engine_rss: int
    engine_fds: int


def sample(done: int, elapsed: float, gateway: int, engine: int) -> Sample:
    gw = status(gateway)
    eng = status(engine)
    return Sample(
        done=done,
        elapsed_s=round(elapsed, 3),
        gateway_rss=gw["VmRSS"],
        gateway_hwm=gw["VmHWM"],
        gateway_fds=open_fds(gateway),
        gateway_threads=gw["Threads"],
        gateway_cpu_s=cpu_seconds(gateway),
        engine_rss=eng["VmRSS"],
        engine_fds=open_fds(engine),
    )


@dataclass
class Load:
    """The client side of the soak: which request comes next, outcomes, samples."""

    url: str
    total: int
    gateway: int
    engine: int
    kinds: list[str] = field(default_factory=pattern)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    next_index: int = 0
    done: int = 0
    began: float = 0.0

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        self.outcomes.setdefault(kind, Counter())[outcome] += 1
        expected = EXPECTED[kind]
        if expected is not None and outcome not in expected:
            self.examples.setdefault(f"{kind}: {outcome}", detail[:300])
        self.done += 1
        if self.done == WARMUP or (self.done > WARMUP and (self.done - WARMUP) % EVERY == 0):
            self.take_sample()

    def take_sample(self) -> None:
        elapsed = time.perf_counter() - self.began
        self.samples.append(sample(self.done, elapsed, self.gateway, self.engine))

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while self.next_index < self.total:
            i = self.next_index
            self.next_index += 1
            kind = self.kinds[i % len(self.kinds)]
            try:
                outcome, detail = await self.one(session, kind, i)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome, detail = f"error {type(exc).__name__}", repr(exc)
            self.record(kind, outcome, detail)

    async def one(self, session: aiohttp.ClientSession, kind: str, i: int) -> tuple[str, str]:
        chat = self.url + "/v1/chat/completions"
        if kind == "malformed":
            async with session.post(chat, data=b'{"model": "stub", "messages": [') as resp:
                return str(resp.status), await resp.text()
        if kind == "unknown":
            body = {"model": "no-such-model", "messages": MESSAGES}
            async with session.post(chat, json=body) as resp:
                return str(resp.status), await resp.text()
        if kind == "plain":
            async with session.post(chat, json={"model": "stub", "messages": MESSAGES}) as resp:
                text = await resp.text()
                if resp.status == 200 and '"choices"' not in text:
                    return "200 without choices", text
                return str(resp.status), text
        if kind == "abandon-plain":
            return await self.abandon_plain(session, chat, delay=(1 + i % 5) / 1000)
        streamed: dict[str, Any] = {"model": "stub", "messages": MESSAGES, "stream": True}
        async with session.post(chat, json=streamed) as resp:
            if resp.status != 200:
                return str(resp.status), await resp.text()
            if kind == "abandon-stream":
                first = b""
                while b"data: " not in first:
                    chunk = await resp.content.readany()
                    if not chunk:
                        return "200 ended before a chunk", first.decode(errors="replace")
                    first += chunk
                resp.close()  # drops the connection mid-stream
                return "200", ""
            data = bytearray()
            async for chunk in resp.content.iter_any():
                data += chunk
            events = data.count(b"data: {")
            if not data.endswith(b"data: [DONE]\n\n") or events != CHUNKS:
                return "200 incomplete", f"{events} events; ends {bytes(data[-80:])!r}"
            return "200", ""

    async def abandon_plain(
        self, session: aiohttp.ClientSession, url: str, delay: float
    ) -> tuple[str, str]:
        async def ask() -> str:
            async with session.post(url, json={"model": "stub", "messages": MESSAGES}) as resp:
                await resp.read()
                return str(resp.status)

        task = asyncio.ensure_future(ask())
        await asyncio.wait({task}, timeout=delay)
        if task.done():
            return task.result(), ""
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled", ""
        return task.result(), ""  # finished between the timeout and the cancel

    async def run(self, concurrency: int) -> float:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.began = time.perf_counter()
            self.take_sample()  # the baseline: engine started, no request yet
            await asyncio.gather(*(self.worker(session) for _ in range(concurrency)))
            elapsed = time.perf_counter() - self.began
            if not self.samples or self.samples[-1].done != self.done:
                self.take_sample()
        return elapsed


def slot_audit(gw: GatewayProcess, within: float = 5.0) -> tuple[bool, dict[str, Any]]:
    """Wait up to ``within`` s for stub's in_flight and waiting to be 0."""
    deadline = time.monotonic() + within
    while True:
        info = gw.model("stub")
        if info["in_flight"] == 0 and info["waiting"] == 0:
            return True, info
        if time.monotonic() > deadline:
            return False, info
        time.sleep(0.1)


def report(
    load: Load,
    elapsed: float,
    audit: tuple[bool, dict[str, Any]],
    shutdown: dict[str, Any],
    rows: dict[str, int],
    log_errors: int,
) -> list[str]:
    base, warm, end = load.samples[0], load.samples[1], load.samples[-1]
    cpu = end.gateway_cpu_s - base.gateway_cpu_s
    after = end.done - warm.done
    growth = end.gateway_rss - warm.gateway_rss
    lines = [
        "| measure | value |",
        "| --- | --- |",
        f"| requests done | {load.done:,} in {elapsed:.1f} s |",
        f"| requests/s | {load.done / elapsed:,.0f} |",
        f"| gateway CPU during the load | {cpu:.1f} s ({cpu / elapsed * 100:.0f} % of a core), "
        f"{cpu / max(load.done, 1) * 1e6:,.0f} µs/request |",
        f"| gateway RSS before the first request | {mib(base.gateway_rss)} MiB |",
        f"| gateway RSS after warm-up ({warm.done:,}) | {mib(warm.gateway_rss)} MiB |",
        f"| gateway RSS at the end ({end.done:,}) | {mib(end.gateway_rss)} MiB |",
        f"| gateway RSS growth after warm-up | {growth / MiB:+.2f} MiB over {after:,} requests, "
        f"{growth / max(after, 1):+,.0f} B/request |",
        f"| gateway peak RSS (VmHWM) | {mib(end.gateway_hwm)} MiB |",
        f"| gateway fds warm-up → end | {warm.gateway_fds} → {end.gateway_fds} |",
        f"| gateway threads warm-up → end | {warm.gateway_threads} → {end.gateway_threads} |",
        f"| engine (stub) RSS warm-up → end | {mib(warm.engine_rss)} → {mib(end.engine_rss)} MiB |",
        f"| engine fds warm-up → end | {warm.engine_fds} → {end.engine_fds} |",
        f"| slot audit (stub in_flight, waiting) | {'ok' if audit[0] else 'FAILED'}: "
        f"{audit[1]['in_flight']}, {audit[1]['waiting']} |",
        f"| SIGTERM | {'clean' if shutdown['clean'] else 'NOT CLEAN'}: exit code "
        f"{shutdown['exit_code']} after {shutdown['exit_s']} s, engine "
        f"{'gone' if shutdown['engine_gone'] else 'STILL RUNNING'} |",
        f"| SQLite rows: request log, decisions (after SIGTERM) | {rows['requests']:,}, "
        f"{rows['decisions']:,} |",
        f"| of which written before SIGTERM | {rows['requests_before_sigterm']:,}, "
        f"{rows['decisions_before_sigterm']:,} |",
        f"| tracebacks in the gateway log | {log_errors} |",
        "",
        "| kind | share | sent | outcomes | expected |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for kind, share in MIX.items():
        got = load.outcomes.get(kind, Counter())
        shown = ", ".join(f"{o}: {n:,}" for o, n in sorted(got.items()))
        expected = EXPECTED[kind]
        want = ", ".join(sorted(expected)) if expected is not None else "any"
        lines.append(f"| {kind} | {share} % | {sum(got.values()):,} | {shown} | {want} |")
    lines += [
        "",
        "| after requests | s | gateway RSS MiB | Δ since warm-up MiB | fds | threads "
        "| gateway CPU s | engine RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in load.samples:
        lines.append(
            f"| {s.done:,} | {s.elapsed_s:.1f} | {mib(s.gateway_rss)} | "
            f"{(s.gateway_rss - warm.gateway_rss) / MiB:+.2f} | {s.gateway_fds} | "
            f"{s.gateway_threads} | {s.gateway_cpu_s - base.gateway_cpu_s:.1f} | "
            f"{mib(s.engine_rss)} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the raw samples and counts here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (log, db)")
    opts = parser.parse_args()
    if opts.requests <= WARMUP:
        parser.error(f"--requests must be over the warm-up of {WARMUP:,}")

    tmp = Path(tempfile.mkdtemp(prefix="modelyard-soak-"))
    port = free_port()
    config = write_stub_config(tmp, port, chunks=CHUNKS, slots=SLOTS)
    log = tmp / "gateway.log"
    gw = launch_gateway(config, port, log)
    print(f"gateway pid {gw.proc.pid} on {gw.base}; temporary dir {tmp}", file=sys.stderr)
    engine = 0
    try:
        gw.wait()
        engine = int(gw.start("stub")["pid"])
        if parent_of(engine) != gw.proc.pid:
            raise SystemExit(f"engine pid {engine} is not a child of the gateway {gw.proc.pid}")
        load = Load(gw.base, opts.requests, gw.proc.pid, engine)
        elapsed = uvloop.run(load.run(opts.concurrency))
        audit = slot_audit(gw)
        # What the gateway has written by now; the rest waits in its store's buffer.
        rows_before = count_rows(tmp / "state" / "modelyard.db")
    finally:
        shutdown = stop_gateway(gw, engine)
    rows = count_rows(tmp / "state" / "modelyard.db")
    rows["requests_before_sigterm"] = rows_before["requests"]
    rows["decisions_before_sigterm"] = rows_before["decisions"]
    log_errors = log.read_text(errors="replace").count("Traceback")

    print("\n".join(report(load, elapsed, audit, shutdown, rows, log_errors)))
    failures = [f"{k} (e.g. {v!r})" for k, v in load.examples.items()]
    if not audit[0]:
        failures.append(f"slot audit: {audit[1]}")
    if not shutdown["clean"]:
        failures.append(f"shutdown: {shutdown}")
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "requests": opts.requests,
                    "concurrency": opts.concurrency,
                    "elapsed_s": elapsed,
                    "samples": [asdict(s) for s in load.samples],
                    "outcomes": {k: dict(v) for k, v in load.outcomes.items()},
                    "slot_audit": {"ok": audit[0], "stub": audit[1]},
                    "shutdown": shutdown,
                    "rows": rows,
                    "tracebacks_in_log": log_errors,
                    "failures": failures,
                },
                indent=2,
            )
        )
    warm, end = load.samples[1], load.samples[-1]
    per_request = (end.gateway_rss - warm.gateway_rss) / max(end.done - warm.done, 1)
    if per_request > 1024:  # reported, not failed: RSS is noisy and allocators keep memory
        print(f"NOTE: gateway RSS grew {per_request:,.0f} B/request after warm-up", file=sys.stderr)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if failures or opts.keep:
        print(f"config, state and gateway log kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
