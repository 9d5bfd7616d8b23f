"""The load generator of bench/compare.py: one measurement against one OpenAI-compatible URL.

The approach of bench/proxy_client.py (aiohttp on uvloop, in a process of its own started
afresh for each measurement, ``concurrency`` requests kept in flight, a warm-up then a counted
window, the CPU time of the watched processes read from /proc over the same window), with two
changes: throughput counts the answers that end and the chunks that arrive inside the window
(so that a target slower than the window is still measured right), and latencies are those of
the requests started inside it. Besides: a model name per target, a check of every answer, and
for streams the arrival time of every chunk (an SSE ``data:`` event with
non-empty ``content``: a token), so that the time to the first chunk (TTFC) and the gaps between
chunks can be told. Chunks that arrive in one read are 0 µs apart.

Latencies, TTFCs and gaps are kept as histograms in whole microseconds (``{us: count}``), so
rounds pool exactly and a result stays small however many events were counted.

    python bench/loadgen.py --url URL --model NAME [--stream] --concurrency 16 \\
        --warmup 0.5 --duration 3 [--watch target=PID --watch stub=PID]    # JSON on stdout

``measure()`` runs that from the driver and returns the parsed result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from harness import chat_body
from procfs import cpu_seconds

DONE = b"data: [DONE]"
# A chunk is a data event that carries text: llama-server opens with a role-only event and
# LiteLLM closes with an empty one, neither of which is a token.
CONTENT = b'"content":"'
EMPTY = b'"content":""'


def request_body(model: str, stream: bool, max_tokens: int, prompt: str) -> bytes:
    """The chat request every target gets (only ``model`` differs between targets)."""
    return chat_body(stream, model, max_tokens, prompt, temperature=0)


def percentile(hist: dict[int, int], q: float) -> float:
    """The ``q`` quantile (0..1) of a ``{microseconds: count}`` histogram, in milliseconds."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = max(1, round(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value / 1000
    return max(hist) / 1000


def merge(into: dict[int, int], more: dict[int, int]) -> None:
    for value, count in more.items():
        into[value] = into.get(value, 0) + count


@dataclass
class Load:
    """One measurement: what was counted in the window, and the CPU spent over it."""

    requests: int = 0  # answers that ended inside the window
    sampled: int = 0  # requests started inside the window and answered (the latency samples)
    errors: int = 0  # requests started inside the window that failed
    elapsed: float = 0.0  # the window's length
    events: int = 0  # chunks (SSE data events with non-empty content) arrived in the window
    latency_us: dict[int, int] = field(default_factory=dict)
    ttfc_us: dict[int, int] = field(default_factory=dict)
    gap_us: dict[int, int] = field(default_factory=dict)
    cpu_window_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # per watched process
    first_error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Load:
        hists = ("latency_us", "ttfc_us", "gap_us")
        load = cls(**{k: v for k, v in data.items() if k not in hists})
        for name in hists:  # JSON keys are text
            setattr(load, name, {int(us): n for us, n in data[name].items()})
        return load


class WrongAnswer(Exception):
    """A 200 that is not the answer asked for, or another status."""


async def generate_load(
    url: str,
    body: bytes,
    *,
    stream: bool,
    concurrency: int,
    warmup: float,
    duration: float,
    min_events: int,
    watch: dict[str, int],
    timeout: float,
    fresh_connections: bool,
) -> Load:
    """Keep ``concurrency`` requests in flight from the start until the window closes.

    Throughput counts what happens inside the window: answers that end in it, chunks that
    arrive in it, over the window's length, so a target whose answers take longer than the
    window is still measured right. Latencies, TTFCs and gaps are those of the requests
    started in the window, followed to their end. CPU times are read at the window's edges.
    """
    import aiohttp

    headers = {"Content-Type": "application/json"}
    result = Load()
    latency: Counter[int] = Counter()
    ttfc: Counter[int] = Counter()
    gaps: Counter[int] = Counter()
    t_start = time.perf_counter() + warmup
    t_stop = t_start + duration

    async def one(session: aiohttp.ClientSession, counted: bool) -> float | None:
        """One request; seconds to its first chunk (streams); raises on a wrong answer."""
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as resp:
            if not stream:
                data = await resp.read()
                if resp.status != 200 or b'"choices"' not in data:
                    raise WrongAnswer(f"status {resp.status}: {data[:200]!r}")
                return None
            if resp.status != 200:
                raise WrongAnswer(f"status {resp.status}: {(await resp.read())[:200]!r}")
            first: float | None = None
            previous = 0.0
            events = 0
            done = False
            pending = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                pending += chunk
                *complete, pending = pending.split(b"\n\n")
                for event in complete:
                    event = event.strip(b"\r\n")
                    if event.startswith(DONE):
                        done = True
                    elif CONTENT in event and EMPTY not in event:
                        events += 1
                        if t_start <= now < t_stop:
                            result.events += 1
                        if first is None:
                            first = now - t0
                        elif counted:
                            gaps[int((now - previous) * 1e6)] += 1
                        previous = now
            if not done or events < min_events:
                raise WrongAnswer(f"{events} chunks, [DONE] {'seen' if done else 'missing'}")
            return first

    async def worker(session: aiohttp.ClientSession) -> None:
        while (t0 := time.perf_counter()) < t_stop:
            counted = t0 >= t_start
            try:
                first = await one(session, counted)
            except Exception as exc:
                if counted:
                    result.errors += 1
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.01)  # a failing target must not spin the loop
                continue
            t1 = time.perf_counter()
            if t_start <= t1 < t_stop:
                result.requests += 1
            if counted:
                result.sampled += 1
                latency[int((t1 - t0) * 1e6)] += 1
                if first is not None:
                    ttfc[int(first * 1e6)] += 1

    def cpu() -> tuple[float, float, dict[str, float]]:
        procs = {name: cpu_seconds(pid) for name, pid in watch.items()}
        return time.perf_counter(), time.process_time(), procs

    async def sample_at(when: float) -> tuple[float, float, dict[str, float]]:
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        return cpu()

    # Fresh connections: for servers that close a kept-alive connection unannounced
    # (llama-server after some streams), which would otherwise fail the next request on it.
    connector = (
        aiohttp.TCPConnector(limit=0, force_close=True)
        if fresh_connections
        else aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    )
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        edges = [asyncio.create_task(sample_at(t)) for t in (t_start, t_stop)]
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        before, after = [await edge for edge in edges]
    result.elapsed = after[0] - before[0]
    result.cpu_window_s = result.elapsed
    result.loadgen_cpu_s = after[1] - before[1]
    result.cpu_s = {name: after[2][name] - before[2][name] for name in watch}
    result.latency_us, result.ttfc_us, result.gap_us = dict(latency), dict(ttfc), dict(gaps)
    return result


@dataclass(frozen=True)
class Spec:
    """What one measurement asks for (the same for every target of a phase but the URL)."""

    stream: bool
    concurrency: int
    warmup: float
    duration: float
    max_tokens: int
    prompt: str
    min_events: int
    timeout: float = 120.0
    fresh_connections: bool = False


def measure(url: str, model: str, spec: Spec, watch: dict[str, int]) -> Load:
    """Run one measurement in a fresh process of this file; its parsed result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--url",
        url,
        "--model",
        model,
        "--concurrency",
        str(spec.concurrency),
        "--warmup",
        str(spec.warmup),
        "--duration",
        str(spec.duration),
        "--max-tokens",
        str(spec.max_tokens),
        "--prompt",
        spec.prompt,
        "--min-events",
        str(spec.min_events),
        "--timeout",
        str(spec.timeout),
    ]
    if spec.stream:
        cmd.append("--stream")
    if spec.fresh_connections:
        cmd.append("--fresh-connections")
    for name, pid in watch.items():
        cmd += ["--watch", f"{name}={pid}"]
    limit = spec.warmup + spec.duration + spec.timeout + 30
    out = subprocess.run(cmd, capture_output=True, timeout=limit)
    if out.returncode != 0:
        tail = out.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"the load generator failed ({out.returncode}): {tail}")
    return Load.from_json(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the chat completions URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt", default="Say hello.")
    parser.add_argument("--min-events", type=int, default=1, help="chunks a stream needs")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--watch", action="append", default=[], help="NAME=PID, CPU read")
    parser.add_argument("--fresh-connections", action="store_true", help="no keep-alive")
    args = parser.parse_args(argv)
    watch = {name: int(pid) for name, _, pid in (w.partition("=") for w in args.watch)}
    result = uvloop.run(
        generate_load(
            args.url,
            request_body(args.model, args.stream, args.max_tokens, args.prompt),
            stream=args.stream,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            min_events=args.min_events,
            watch=watch,
            timeout=args.timeout,
            fresh_connections=args.fresh_connections,
        )
    )
    json.dump(asdict(result), sys.stdout)


if __name__ == "__main__":
    main()
