"""Backup and restore: how long ``modelyard backup`` and ``restore`` take for a store of a
given size (``modelyard.backup``, in process: the CLI adds its start-up).

A fresh store (``Store``: its schema, WAL) gets ``--rows`` request-log rows like a chat
request's, is closed, then backed up to a tar and restored into another state dir,
``--rounds`` times; prints the store's size, each round's seconds and the median.

    .venv/bin/python bench/backup.py [--rows 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from modelyard.backup import backup, restore
from modelyard.store import Store

COLUMNS = (
    "at, key, endpoint, asked, model, node, instance, decision, status, outcome, stream, "
    "tokens_in, tokens_out, wait_s, ttft_s, duration_s"
)


def _store(state: Path, rows: int) -> int:
    store = Store(state / "modelyard.db")
    now = time.time()
    store.db.executemany(
        f"INSERT INTO request_log({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            (now + i, "alice", "chat", "auto", "qwen", "local", "qwen#1", f"d-{i}", 200, "ok",
             1, 120, 400, 0.01, 0.2, 1.5)
            for i in range(rows)
        ),
    )  # fmt: skip
    asyncio.run(store.close())
    return (state / "modelyard.db").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = _store(root / "state", args.rows)
        took: dict[str, list[float]] = {"backup": [], "restore": []}
        for i in range(args.rounds):
            began = time.perf_counter()
            backup(root / "state", root / f"b{i}.tar")
            took["backup"].append(time.perf_counter() - began)
            began = time.perf_counter()
            restore(root / f"restored{i}", root / f"b{i}.tar")
            took["restore"].append(time.perf_counter() - began)
        print(f"{args.rows:,} request rows, store {size / 2**20:.1f} MiB, {args.rounds} rounds")
        print("| step | median s | rounds (s) |\n| --- | ---: | --- |")
        for step, seconds in took.items():
            each = ", ".join(f"{s:.3f}" for s in seconds)
            print(f"| {step} | {statistics.median(seconds):.3f} | {each} |")


if __name__ == "__main__":
    main()
