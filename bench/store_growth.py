"""Store growth: how much the gateway's SQLite store grows per request, by request headers.

For each case, a fresh ``modelyard serve`` and state dir (bench/soak.py's config: one
``command`` model, ``stub``, served by bench/upstream_stub.py), ``--requests`` non-streamed
chat completions at ``--concurrency`` (aiohttp on uvloop), then SIGTERM:

  none       no extra header                                  model stub           expect 200
  1kb        ``x-junk: `` + 1,000 characters                  model stub           expect 200
  100kb      ``x-junk: `` + 100,000 characters                model stub           expect 200
             (this case's config sets ``access: {max_header_bytes: 256KiB}``)
  1kb-404    ``x-junk: `` + 1,000 characters                  model no-such-model  expect 404

Store size: ``page_count * page_size`` of state_dir/modelyard.db from a separate connection
right after ``PRAGMA wal_checkpoint(TRUNCATE)`` (the -wal then empty; the figure is the db
file's size), before the first request (model started) and after the gateway stopped; growth
is the difference (it includes the few events written at stop). Also shown: db and -wal file
sizes right after the stop, rows in ``request_log`` and ``decisions``, a decision body's mean
length. Prints a markdown table.

    .venv/bin/python bench/store_growth.py [--requests 10000] [--concurrency 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
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

from gateway import MESSAGES, count_rows, launch_gateway, stop_gateway, write_stub_config
from harness import free_port

# name: (header value length or None, model, expected status, extra config)
CASES: dict[str, tuple[int | None, str, int, str]] = {
    "none": (None, "stub", 200, ""),
    "1kb": (1_000, "stub", 200, ""),
    "100kb": (100_000, "stub", 200, "access:\n  max_header_bytes: 256KiB\n"),
    "1kb-404": (1_000, "no-such-model", 404, ""),
}


@dataclass
class Result:
    case: str
    requests: int
    elapsed_s: float
    statuses: dict[str, int]
    before_bytes: int  # page_count * page_size after a TRUNCATE checkpoint, before the load
    after_bytes: int  # the same after the gateway stopped
    db_file_after_stop: int  # file sizes right after the stop, before our checkpoint
    wal_file_after_stop: int
    freelist_pages: int
    request_log_rows: int
    decision_rows: int
    decision_body_mean: float
    shutdown: dict[str, Any]
    tracebacks: int
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        return self.after_bytes - self.before_bytes


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def checkpointed_size(db: Path) -> tuple[int, int]:
    """TRUNCATE-checkpoint from a separate connection; page_count * page_size, freelist."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            print(f"NOTE: wal_checkpoint(TRUNCATE) on {db} was blocked", file=sys.stderr)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(size), int(free)
    finally:
        con.close()


def body_mean(db: Path) -> float:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        mean = con.execute("SELECT AVG(LENGTH(body)) FROM decisions").fetchone()[0]
        return float(mean or 0.0)
    finally:
        con.close()


async def drive(
    url: str, total: int, concurrency: int, model: str, headers: dict[str, str], expect: int
) -> tuple[float, Counter[str], dict[str, str]]:
    statuses: Counter[str] = Counter()
    examples: dict[str, str] = {}
    left = iter(range(total))
    body = {"model": model, "messages": MESSAGES}
    chat = url + "/v1/chat/completions"

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in left:
            try:
                async with session.post(chat, json=body, headers=headers) as resp:
                    text = await resp.text()
                    outcome = str(resp.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome, text = f"error {type(exc).__name__}", repr(exc)
            statuses[outcome] += 1
            if outcome != str(expect):
                examples.setdefault(outcome, text[:300])

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - began, statuses, examples


def run_case(name: str, total: int, concurrency: int, keep: bool) -> Result:
    length, model, expect, extra = CASES[name]
    headers = {} if length is None else {"x-junk": "j" * length}
    tmp = Path(tempfile.mkdtemp(prefix=f"modelyard-store-{name}-"))
    port = free_port()
    config = write_stub_config(tmp, port, extra=extra)
    db = tmp / "state" / "modelyard.db"
    log = tmp / "gateway.log"
    gw = launch_gateway(config, port, log)
    print(f"{name}: gateway pid {gw.proc.pid} on {gw.base}; temporary dir {tmp}", file=sys.stderr)
    engine = 0
    try:
        gw.wait()
        engine = int(gw.start("stub")["pid"])
        before, _ = checkpointed_size(db)
        elapsed, statuses, examples = uvloop.run(
            drive(gw.base, total, concurrency, model, headers, expect)
        )
    finally:
        shutdown = stop_gateway(gw, engine)
    db_file, wal_file = file_size(db), file_size(db.with_name(db.name + "-wal"))
    after, free = checkpointed_size(db)
    rows = count_rows(db)
    result = Result(
        case=name,
        requests=total,
        elapsed_s=round(elapsed, 2),
        statuses=dict(statuses),
        before_bytes=before,
        after_bytes=after,
        db_file_after_stop=db_file,
        wal_file_after_stop=wal_file,
        freelist_pages=free,
        request_log_rows=rows["requests"],
        decision_rows=rows["decisions"],
        decision_body_mean=round(body_mean(db), 1),
        shutdown=shutdown,
        tracebacks=log.read_text(errors="replace").count("Traceback"),
        examples=examples,
    )
    if keep or examples or not shutdown.get("clean"):
        print(f"{name}: config, state and gateway log kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def table(results: list[Result]) -> list[str]:
    lines = [
        "| case | statuses | s | store before | store after | growth | B/request "
        "| db + wal files after stop | request_log rows | decisions rows | decision body mean "
        "| freelist pages | SIGTERM |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        shown = ", ".join(f"{k}: {v:,}" for k, v in sorted(r.statuses.items()))
        lines.append(
            f"| {r.case} | {shown} | {r.elapsed_s:.1f} | {r.before_bytes:,} | "
            f"{r.after_bytes:,} | {r.growth:+,} | {r.growth / max(r.requests, 1):,.1f} | "
            f"{r.db_file_after_stop:,} + {r.wal_file_after_stop:,} | {r.request_log_rows:,} | "
            f"{r.decision_rows:,} | {r.decision_body_mean:,.1f} | {r.freelist_pages} | "
            f"{'clean' if r.shutdown.get('clean') else 'NOT CLEAN'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dirs")
    opts = parser.parse_args()
    names = [c for c in opts.cases.split(",") if c]
    if unknown := [c for c in names if c not in CASES]:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")

    began = time.perf_counter()
    results = [run_case(n, opts.requests, opts.concurrency, opts.keep) for n in names]
    wall = time.perf_counter() - began
    print(
        f"{opts.requests:,} non-streamed chat requests per case at concurrency "
        f"{opts.concurrency}; store = page_count * page_size after wal_checkpoint(TRUNCATE); "
        f"wall {wall:.0f} s\n"
    )
    print("\n".join(table(results)))
    failures = [f"{r.case}: {k} (e.g. {v!r})" for r in results for k, v in r.examples.items()]
    failures += [f"{r.case}: shutdown {r.shutdown}" for r in results if not r.shutdown["clean"]]
    failures += [f"{r.case}: {r.tracebacks} tracebacks" for r in results if r.tracebacks]
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "requests": opts.requests,
                    "concurrency": opts.concurrency,
                    "wall_s": round(wall, 1),
                    "results": [asdict(r) | {"growth": r.growth} for r in results],
                    "failures": failures,
                },
                indent=2,
            )
        )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
