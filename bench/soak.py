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
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

REPO = Path(__file__).resolve().parent.parent
STUB = REPO / "bench" / "upstream_stub.py"
CHUNKS = 16
SLOTS = 16
WARMUP = 1_000
EVERY = 2_000
MiB = 1024 * 1024

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
MESSAGES = [{"role": "user", "content": "Say hello."}]


def pattern() -> list[str]:
    kinds = [kind for kind, share in MIX.items() for _ in range(share)]
    random.Random(20_000).shuffle(kinds)
    return kinds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, method: str = "GET", timeout: float = 30) -> Any:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes, Threads, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
    gw = proc_status(gateway)
    eng = proc_status(engine)
    return Sample(
        done=done,
        elapsed_s=round(elapsed, 3),
        gateway_rss=gw["VmRSS"],
        gateway_hwm=gw["VmHWM"],
        gateway_fds=len(os.listdir(f"/proc/{gateway}/fd")),
        gateway_threads=gw["Threads"],
        gateway_cpu_s=cpu_seconds(gateway),
        engine_rss=eng["VmRSS"],
        engine_fds=len(os.listdir(f"/proc/{engine}/fd")),
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


def write_config(tmp: Path, port: int) -> Path:
    command = [sys.executable, str(STUB), "--port", "{port}", "--chunks", str(CHUNKS)]
    config = tmp / "soak.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"state_dir: {tmp / 'state'}\n"
        "models:\n"
        "  stub:\n"
        "    engine: command\n"
        f"    command: {json.dumps(command)}\n"
        f"    slots: {SLOTS}\n"
        "    queue: 100\n",
        encoding="utf-8",
    )
    return config


def wait_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not answer /health within 60 s")
        time.sleep(0.1)


def stub_info(url: str) -> dict[str, Any]:
    models = get_json(url + "/admin/models")["models"]
    info: dict[str, Any] = next(m for m in models if m["name"] == "stub")
    return info


def slot_audit(url: str, within: float = 5.0) -> tuple[bool, dict[str, Any]]:
    """Wait up to ``within`` s for stub's in_flight and waiting to be 0."""
    deadline = time.monotonic() + within
    while True:
        info = stub_info(url)
        if info["in_flight"] == 0 and info["waiting"] == 0:
            return True, info
        if time.monotonic() > deadline:
            return False, info
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], engine: int, log: Path) -> dict[str, Any]:
    """SIGTERM; clean = exit 0 or by SIGTERM (uvicorn re-raises the signal it caught once
    its shutdown is done) with uvicorn's "Finished server process" logged, engine gone."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait(10)
    exit_s = time.monotonic() - began
    deadline = time.monotonic() + 15  # a killed engine may take a moment to be reaped
    while alive(engine) and time.monotonic() < deadline:
        time.sleep(0.1)
    finished = "Finished server process" in log.read_text(errors="replace")
    gone = not alive(engine)
    clean = code in (0, -signal.SIGTERM) and finished and gone
    return {"exit_code": code, "exit_s": round(exit_s, 2), "engine_gone": gone, "clean": clean}


def count_rows(db: Path) -> dict[str, int]:
    """Rows of the request log (table ``requests``, or ``request_log`` in newer schemas) and
    of ``decisions``; -1 for a table that is not there."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        log = "request_log" if "request_log" in names else "requests"
        return {
            key: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if table in names
            else -1
            for key, table in (("requests", log), ("decisions", "decisions"))
        }
    finally:
        con.close()


def mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


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
    config = write_config(tmp, port)
    log = tmp / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    python = REPO / ".venv" / "bin" / "python"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(python if python.exists() else sys.executable),
                "-m",
                "modelyard",
                "serve",
                "-c",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    print(f"gateway pid {proc.pid} on {url}; temporary dir {tmp}", file=sys.stderr)
    engine = 0
    try:
        wait_health(url, proc, log)
        get_json(url + "/admin/models/stub/start", method="POST", timeout=60)
        engine = int(stub_info(url)["pid"])
        if parent_of(engine) != proc.pid:
            raise SystemExit(f"engine pid {engine} is not a child of the gateway {proc.pid}")
        load = Load(url, opts.requests, proc.pid, engine)
        elapsed = uvloop.run(load.run(opts.concurrency))
        audit = slot_audit(url)
        # What the gateway has written by now; the rest waits in its store's buffer.
        rows_before = count_rows(tmp / "state" / "modelyard.db")
    finally:
        shutdown = (
            stop(proc, engine, log)
            if proc.poll() is None
            else {
                "exit_code": proc.returncode,
                "exit_s": 0.0,
                "engine_gone": not alive(engine),
                "clean": False,
            }
        )
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
