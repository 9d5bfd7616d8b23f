"""The store's request log and decisions: written in one go, filtered, pruned, closed safely."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.store import RequestRow, Store


def row(i: int, **kw: object) -> RequestRow:
    values: dict[str, object] = {
        "at": 1000.0 + i,
        "key": "alice" if i % 2 else None,
        "endpoint": "/chat/completions",
        "asked": "auto",
        "model": "small" if i % 3 else "big",
        "node": "local",
        "instance": "small#1",
        "decision": f"d{i}",
        "status": 200 if i % 5 else 504,
        "outcome": "ok" if i % 5 else "timeout",
        "stream": bool(i % 2),
        "tokens_in": 10,
        "tokens_out": i,
        "wait_s": 0.0,
        "ttft_s": 0.1,
        "duration_s": 0.5,
        "error": None,
    }
    values.update(kw)
    return RequestRow(**values)  # type: ignore[arg-type]


def test_rows_round_trip_and_filter(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for i in range(1, 31):
        store.request(row(i))
        store.decision(f"d{i}", "auto", "r", "small", "local", 200, None, {"id": f"d{i}", "i": i})
    rows = store.requests({}, limit=100)
    assert len(rows) == 30 and rows[0]["decision"] == "d30"  # newest first
    assert rows[0] == {**row(30)._asdict(), "stream": False}
    assert len(store.requests({"outcome": "timeout"})) == 6
    assert len(store.requests({"model": "big", "key": "alice"})) == 5
    assert len(store.requests({}, since=1025.0)) == 6
    assert store.decision_by_id("d7") == {"id": "d7", "i": 7}
    with pytest.raises(ValueError, match="no filter 'prompt'"):
        store.requests({"prompt": "x"})


@pytest.mark.parametrize("n", [1, 2, 3, 127, 128, 129, 255, 256, 300, 1001])
def test_every_row_of_a_flush_is_written_once_in_order(tmp_path: Path, n: int) -> None:
    store = Store(tmp_path / "s.db")
    for i in range(n):
        store.request(row(i, tokens_out=i))
        store.decision(f"d{i}", "auto", None, "small", "local", 200, None, {"id": f"d{i}"})
    store.flush()
    rows = store.requests({}, limit=n + 10)
    assert [r["tokens_out"] for r in rows] == list(range(n - 1, -1, -1))
    assert len(store.decisions(limit=n + 10)) == n


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for i in range(1, 251):
        store.request(row(i))
        store.decision(f"d{i}", "auto", None, "small", "local", 200, None, {"id": f"d{i}"})
    store.flush()
    store.prune(keep_requests=100, keep_decisions=120)
    rows = store.requests({}, limit=1000)
    assert len(rows) == 100 and rows[-1]["decision"] == "d151"
    assert len(store.decisions(1000)) == 120


def test_close_waits_for_a_running_flush_and_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM while the flusher writes: close() waits for it (it used to race and crash)."""

    async def scene() -> None:
        store = Store(tmp_path / "s.db")
        store.start_flusher(every=0.01)
        for burst in range(20):
            for i in range(500):
                store.request(row(burst * 500 + i))
            await asyncio.sleep(0.005)
        await store.close()

    asyncio.run(scene())
    again = Store(tmp_path / "s.db")
    assert len(again.requests({}, limit=100_000)) == 10_000


def test_a_store_of_an_earlier_version_gains_the_speech_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # the request log as it was before speech had its units
    old.execute(
        "CREATE TABLE request_log (id INTEGER PRIMARY KEY, at REAL NOT NULL, key TEXT, "
        "endpoint TEXT NOT NULL, asked TEXT NOT NULL, model TEXT, node TEXT, instance TEXT, "
        "decision TEXT, status INTEGER NOT NULL, outcome TEXT NOT NULL, stream INTEGER NOT "
        "NULL, tokens_in INTEGER, tokens_out INTEGER, wait_s REAL, ttft_s REAL, duration_s "
        "REAL NOT NULL, error TEXT)"
    )
    old.execute(
        "INSERT INTO request_log (at, endpoint, asked, status, outcome, stream, duration_s) "
        "VALUES (1.0, '/chat/completions', 'a', 200, 'ok', 0, 0.5)"
    )
    old.commit()
    old.close()
    store = Store(path)
    store.request(row(2, endpoint="/audio/speech", tokens_in=None, chars=17))
    store.request(row(3, endpoint="/audio/transcriptions", tokens_in=None, audio_s=2.5))
    store.flush()
    rows = {r["endpoint"]: r for r in store.requests({}, limit=10)}
    assert rows["/chat/completions"]["chars"] is None  # the old row is kept, unchanged
    assert rows["/audio/speech"]["chars"] == 17
    assert rows["/audio/transcriptions"]["audio_s"] == 2.5
    Store(path)  # opened again: nothing to add, no error
