"""The store: SQLite in WAL mode for what must survive a restart.

Instance events (ready with its load time, stopped, failed, crashed) and one row per
request. Request rows are buffered and written off the event loop after the response
is done, never before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

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
CREATE INDEX IF NOT EXISTS decisions_at ON decisions(at);
CREATE TABLE IF NOT EXISTS node_modes (
    node TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    instance TEXT,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    wait_s REAL,
    duration_s REAL,
    error TEXT
);
"""


class Store:
    """One SQLite file in the state directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # Request rows are written from a worker thread, through a connection of their own.
        self._writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._pending: list[tuple[Any, ...]] = []
        self._decisions: list[tuple[Any, ...]] = []
        self._load_cache: dict[str, float | None] = {}
        self._flusher: asyncio.Task[None] | None = None

    def event(self, model: str, event: str, detail: str = "", seconds: float | None = None) -> None:
        """Record an instance event now (rare: starts and stops, not requests)."""
        self.db.execute(
            "INSERT INTO events(at, model, event, detail, seconds) VALUES (?, ?, ?, ?, ?)",
            (time.time(), model, event, detail[:4000], seconds),
        )
        if event == "ready":
            self._load_cache.pop(model, None)

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

    def request(
        self,
        model: str,
        instance: str | None,
        endpoint: str,
        status: int,
        stream: bool,
        wait_s: float | None,
        duration_s: float,
        error: str | None = None,
    ) -> None:
        """Queue one request row; written within a second, off the event loop."""
        self._pending.append(
            (time.time(), model, instance, endpoint, status, int(stream), wait_s, duration_s, error)
        )

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
        self._decisions.append(
            (id, time.time(), asked, rule, model, node, status, degraded, json.dumps(body))
        )

    def decisions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest decisions, newest first (pending ones are written first)."""
        self.flush()
        rows = self.db.execute(
            "SELECT body FROM decisions ORDER BY at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def decision_by_id(self, id: str) -> dict[str, Any] | None:
        self.flush()
        row = self.db.execute("SELECT body FROM decisions WHERE id = ?", (id,)).fetchone()
        return json.loads(row[0]) if row else None

    def flush(self) -> None:
        decided, self._decisions = self._decisions, []
        if decided:
            self._writer.executemany(
                "INSERT OR REPLACE INTO decisions(id, at, asked, rule, model, node, status, "
                "degraded, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                decided,
            )
        rows, self._pending = self._pending, []
        if rows:
            self._writer.executemany(
                "INSERT INTO requests(at, model, instance, endpoint, status, stream, wait_s, "
                "duration_s, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def start_flusher(self, every: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                await asyncio.to_thread(self.flush)

        self._flusher = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()
        self._writer.close()
        self.db.close()
