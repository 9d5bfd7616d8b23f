"""The store: SQLite in WAL mode for what must survive a restart.

Instance events (ready with its load time, stopped, failed, crashed), routing decisions,
node modes, the engine processes running now (so that a restart stops what a killed
gateway or agent left behind) and the request log, one row per request. Decisions and
request rows are buffered and written off the event loop within a second (a kill -9 loses
at most that second), never before the first byte; old ones are pruned to the configured
bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from modelyard.events import Event
from modelyard.migrations import added_columns, both, migrate, script

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    seconds REAL
);
CREATE INDEX IF NOT EXISTS events_model ON events(model, event, at);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    asked TEXT NOT NULL,
    rule TEXT,
    model TEXT,
    node TEXT,
    status INTEGER,
    degraded TEXT,
    body TEXT NOT NULL
);
DROP INDEX IF EXISTS decisions_at;  -- newest first is rowid order: one index less per write
CREATE TABLE IF NOT EXISTS node_modes (
    node TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS request_log (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    key TEXT,
    endpoint TEXT NOT NULL,
    asked TEXT NOT NULL,
    model TEXT,
    node TEXT,
    instance TEXT,
    decision TEXT,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    stream INTEGER NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    wait_s REAL,
    ttft_s REAL,
    duration_s REAL NOT NULL,
    error TEXT,
    audio_s REAL,
    chars INTEGER
);
CREATE INDEX IF NOT EXISTS request_log_at ON request_log(at);
CREATE TABLE IF NOT EXISTS engines (
    pid INTEGER NOT NULL,
    started INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    boot TEXT NOT NULL,
    model TEXT NOT NULL,
    argv0 TEXT NOT NULL,
    tag TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_started INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (pid, started)
);
"""

_DECISION = ("id", "at", "asked", "rule", "model", "node", "status", "degraded", "body")


_CHUNK = 128  # rows per statement: 17 columns x 128 is far under SQLite's 32,766 parameters


@functools.lru_cache(maxsize=32)
def _insert(table: str, columns: tuple[str, ...], rows: int, verb: str) -> str:
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return f"{verb} INTO {table}({', '.join(columns)}) VALUES " + ", ".join([one] * rows)


def _sizes(n: int) -> Iterator[int]:
    """``n`` rows as full chunks, then powers of two: a handful of distinct statements."""
    while n > 0:
        size = _CHUNK if n >= _CHUNK else 1 << (n.bit_length() - 1)
        yield size
        n -= size


def _insert_rows(
    db: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    verb: str = "INSERT",
) -> None:
    # Many rows per statement: the parameters are bound in C in one call and the statement
    # steps once with the GIL released, so the writer thread needs the GIL back once per
    # chunk, not once per row as with executemany (with the event loop busy, each of those
    # waits cost up to 5 ms: seen as a backlog that grew without bound in bench/soak.py).
    # Nothing is parsed on the way: an earlier json_each(?) form re-parsed each row's JSON
    # for every column (SQLite 3.40), 20-30 us a row.
    start = 0
    for size in _sizes(len(rows)):
        params = list(itertools.chain.from_iterable(rows[start : start + size]))
        db.execute(_insert(table, columns, size, verb), params)
        start += size


_FILTERS = ("key", "asked", "model", "node", "outcome", "status", "decision")


class RequestRow(NamedTuple):
    """One request as the log keeps it: who, what was asked and served, how it went.

    No prompt text and no key: ``key`` is the key's name. A tuple in the order of the
    table's columns (``_ROW``), queued as it is.
    """

    at: float  # wall clock, when it arrived
    key: str | None
    endpoint: str
    asked: str
    model: str | None  # the model that served it, or the last one tried
    node: str | None
    instance: str | None
    decision: str | None
    status: int
    outcome: str
    stream: bool
    tokens_in: int | None
    tokens_out: int | None
    wait_s: float | None  # for a slot or a load
    ttft_s: float | None  # arrival to the first byte of the answer
    duration_s: float
    error: str | None
    # Speech in place of tokens: the seconds of audio transcribed, the characters spoken.
    audio_s: float | None = None
    chars: int | None = None


# Columns added since the table was first made: a store written before has them added.
_ADDED = {"audio_s": "REAL", "chars": "INTEGER"}
_ROW: tuple[str, ...] = RequestRow._fields  # the table's columns, in this order
# The file's schema, version by version (migrations.py): append a step for each change.
STEPS = (both(script(SCHEMA), added_columns("request_log", _ADDED)),)


class EngineRow(NamedTuple):
    """An engine process a supervisor started and has not yet seen end.

    A process is known by its pid and its start time together: a pid alone may belong to
    another process by the time anyone reads the row.
    """

    pid: int
    started: int  # /proc/PID/stat field 22: clock ticks from boot to the process's start
    pgid: int  # its process group (its own: engines start in a new session)
    boot: str  # /proc/sys/kernel/random/boot_id: start times count from this boot
    model: str
    argv0: str
    tag: str  # the value of MODELYARD_ENGINE in its environment, which its children inherit
    owner_pid: int  # the gateway or agent that started it, known by pid and start time too
    owner_started: int


_ENGINE: tuple[str, ...] = EngineRow._fields


class Store:
    """One SQLite file in the state directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        migrate(self.db, STEPS, path)  # first: a newer release's file is left as it is
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Request rows are written from a worker thread, through a connection of their own.
        self._writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._pending: list[tuple[Any, ...]] = []
        self._decisions: list[tuple[Any, ...]] = []
        self._load_cache: dict[str, float | None] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight: asyncio.Future[None] | None = None  # the flush running in a thread
        # One thread of its own: the writes never overlap, and its memory (glibc gives each
        # thread that allocates its own arena) is one arena's, not one per pool worker.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="modelyard-store")

    def event(self, model: str, event: str, detail: str = "", seconds: float | None = None) -> None:
        """Record an instance event now (rare: starts and stops, not requests)."""
        self.db.execute(
            "INSERT INTO events(at, model, event, detail, seconds) VALUES (?, ?, ?, ?, ?)",
            (time.time(), model, event, detail[:4000], seconds),
        )
        if event == "ready":
            self._load_cache.pop(model, None)

    def on_event(self, event: Event) -> None:
        """The hub's listener: instance events and reloads are kept (starts and stops of
        a start, ``starting`` and ``stopping``, are not: their outcome is)."""
        data = event.data
        if event.kind == "instance" and data["event"] not in ("starting", "stopping"):
            self.event(data["model"], data["event"], data["detail"], data["seconds"])
        elif event.kind == "config":
            added, changed, removed = data["added"], data["changed"], data["removed"]
            self.event("config", "reloaded", f"added {added}, changed {changed}, removed {removed}")

    def events(self, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = "SELECT at, model, event, detail, seconds FROM events"
        args: tuple[Any, ...] = ()
        if model is not None:
            query, args = query + " WHERE model = ?", (model,)
        rows = self.db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("at", "model", "event", "detail", "seconds")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def mode(self, node: str) -> str | None:
        """The mode ``node`` was last set to here, if ever."""
        row = self.db.execute("SELECT mode FROM node_modes WHERE node = ?", (node,)).fetchone()
        return str(row[0]) if row else None

    def set_mode(self, node: str, mode: str) -> None:
        """Persist ``node``'s mode (it outlives restarts)."""
        self.db.execute(
            "INSERT INTO node_modes(node, mode, at) VALUES (?, ?, ?) "
            "ON CONFLICT(node) DO UPDATE SET mode = excluded.mode, at = excluded.at",
            (node, mode, time.time()),
        )

    def add_engine(self, row: EngineRow) -> None:
        """Record an engine process just started (rare, so written now)."""
        insert = _insert("engines", (*_ENGINE, "at"), 1, "INSERT OR REPLACE")
        self.db.execute(insert, (*row, time.time()))

    def drop_engine(self, pid: int, started: int) -> None:
        """Forget an engine process: it ended, or was stopped."""
        self.db.execute("DELETE FROM engines WHERE pid = ? AND started = ?", (pid, started))

    def engines(self) -> list[EngineRow]:
        """The engine processes recorded as running, oldest first."""
        rows = self.db.execute(f"SELECT {', '.join(_ENGINE)} FROM engines ORDER BY at").fetchall()
        return [EngineRow(*row) for row in rows]

    def typical_load_seconds(self, model: str) -> float | None:
        """Median of the last five load times of ``model``, if it ever loaded."""
        if model not in self._load_cache:
            rows = self.db.execute(
                "SELECT seconds FROM events WHERE model = ? AND event = 'ready' "
                "AND seconds IS NOT NULL ORDER BY id DESC LIMIT 5",
                (model,),
            ).fetchall()
            self._load_cache[model] = statistics.median(r[0] for r in rows) if rows else None
        return self._load_cache[model]

    def request(self, row: RequestRow) -> None:
        """Queue one request row; written within a second, off the event loop."""
        self._pending.append(row)

    def decision(
        self,
        id: str,
        asked: str,
        rule: str | None,
        model: str | None,
        node: str | None,
        status: int,
        degraded: str | None,
        body: dict[str, Any],
    ) -> None:
        """Queue one routing decision with its whole trail; written off the event loop."""
        self._decisions.append((id, time.time(), asked, rule, model, node, status, degraded, body))

    def decisions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest decisions, newest first (pending ones are written first)."""
        self._settle()
        rows = self.db.execute(
            "SELECT body FROM decisions ORDER BY rowid DESC LIMIT ?", (limit,)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def decision_by_id(self, id: str) -> dict[str, Any] | None:
        self._settle()
        row = self.db.execute("SELECT body FROM decisions WHERE id = ?", (id,)).fetchone()
        return json.loads(row[0]) if row else None

    def flush(self) -> None:
        """Write what is queued now (on the caller's thread)."""
        self._write(*self._take())

    def _settle(self) -> None:
        """Before a read: what is queued written, and a batch the flusher's thread is writing
        now committed (its lock is held until then), so a row just recorded is found."""
        self.flush()
        with self._lock:
            pass

    def _take(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        # Called on the event loop, where rows are queued: nothing is appended meanwhile.
        decided, self._decisions = self._decisions, []
        rows, self._pending = self._pending, []
        return decided, rows

    def _write(self, decided: list[tuple[Any, ...]], rows: list[tuple[Any, ...]]) -> None:
        if not decided and not rows:
            return
        with self._lock:  # one transaction at a time on the writer connection
            if self._closed:
                raise RuntimeError("the store is closed")
            self._writer.execute("BEGIN")
            try:
                if decided:
                    bodies = [(*d[:-1], orjson.dumps(d[-1]).decode()) for d in decided]
                    _insert_rows(self._writer, "decisions", _DECISION, bodies, "INSERT OR REPLACE")
                if rows:
                    _insert_rows(self._writer, "request_log", _ROW, rows)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def prune(self, keep_requests: int, keep_decisions: int) -> None:
        """Keep the newest ``keep_requests`` request rows and ``keep_decisions`` decisions."""
        with self._lock:
            if self._closed:
                return
            self._writer.execute(
                "DELETE FROM request_log WHERE id <= (SELECT MAX(id) FROM request_log) - ?",
                (keep_requests,),
            )
            self._writer.execute(
                "DELETE FROM decisions WHERE rowid <= (SELECT MAX(rowid) FROM decisions) - ?",
                (keep_decisions,),
            )

    def requests(
        self, filters: dict[str, str | int], since: float | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The newest request rows matching ``filters`` (exact values), newest first."""
        self._settle()
        where: list[str] = []
        args: list[str | int | float] = []
        for name, value in filters.items():
            if name not in _FILTERS:
                raise ValueError(f"no filter {name!r}; filters: {', '.join(_FILTERS)}")
            where.append(f"{name} = ?")
            args.append(value)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        query = f"SELECT {', '.join(_ROW)} FROM request_log"
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self.db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{**dict(zip(_ROW, row, strict=True)), "stream": bool(row[10])} for row in rows]

    def start_flusher(
        self, every: float = 1.0, keep_requests: int = 100_000, keep_decisions: int = 100_000
    ) -> None:
        """Write what is queued every ``every`` seconds in a thread; prune once a minute."""

        def tick(decided: list[tuple[Any, ...]], rows: list[tuple[Any, ...]], prune: bool) -> None:
            self._write(decided, rows)
            if prune:
                self.prune(keep_requests, keep_decisions)

        async def loop() -> None:
            for n in itertools.count(1):
                await asyncio.sleep(every)
                # Shielded: a cancel (close) must not leave a write running unseen.
                self._in_flight = asyncio.get_running_loop().run_in_executor(
                    self._thread, tick, *self._take(), n % 60 == 0
                )
                await asyncio.shield(self._in_flight)

        self._flusher = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._in_flight is not None and not self._in_flight.done():
            with contextlib.suppress(Exception):
                await self._in_flight  # its rows are in before the last write and the close
        self.flush()
        with self._lock:
            self._closed = True
            self._writer.close()
            self.db.close()
        self._thread.shutdown(wait=False)
