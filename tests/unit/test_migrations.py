"""State files carry a schema version and come forward (modelyard.migrations): a file of an
earlier release opens with every row; one of a newer release is refused and left as it was."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from modelyard.conversations import Conversations
from modelyard.gateway.session import SessionStore
from modelyard.migrations import NewerSchema, migrate, script, version_of
from modelyard.store import STEPS, Store

BEFORE = Path(__file__).parent.parent / "data" / "modelyard-db-before-versions.sql"


def _written(path: Path, sql: str, version: int = 0) -> None:
    db = sqlite3.connect(path)
    db.executescript(sql)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


def test_a_store_of_a_release_before_versions_opens_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "modelyard.db"
    _written(path, BEFORE.read_text(encoding="utf-8"))
    store = Store(path)
    try:
        assert version_of(store.db) == len(STEPS) == 1
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(request_log)")}
        assert {"audio_s", "chars"} <= columns  # added since that release
        [row] = store.db.execute("SELECT key, model, tokens_out, audio_s FROM request_log")
        assert row == ("alice", "qwen", 40, None)
        assert store.typical_load_seconds("qwen") == 3.25  # its events read as before
        assert store.db.execute("SELECT node, mode FROM node_modes").fetchall() == [
            ("gamer", "gaming")
        ]
        assert store.db.execute("SELECT count(*) FROM decisions").fetchone() == (1,)
    finally:
        asyncio.run(store.close())
    again = Store(path)  # at its version: nothing to do
    assert version_of(again.db) == 1
    asyncio.run(again.close())


def test_a_store_of_a_newer_release_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "modelyard.db"
    _written(path, "CREATE TABLE future (x);", version=7)
    before = path.read_bytes()
    with pytest.raises(NewerSchema) as refused:
        Store(path)
    assert str(refused.value).startswith(
        f"{path} has schema version 7, written by a newer modelyard; this one"
    )
    assert "knows up to 1: upgrade modelyard to open it" in str(refused.value)
    check = sqlite3.connect(path)
    assert version_of(check) == 7 and check.execute(
        "SELECT name FROM sqlite_master"
    ).fetchall() == [("future",)]
    check.close()
    assert path.read_bytes()[:100] == before[:100]  # its header (version included) unchanged


def test_conversations_and_sessions_carry_their_version(tmp_path: Path) -> None:
    conversations = Conversations(tmp_path / "conversations.db", 1 << 20)
    asyncio.run(conversations.open())
    assert version_of(conversations.db) == 1
    asyncio.run(conversations.close())
    sessions = SessionStore(tmp_path / "sessions.db")
    assert version_of(sessions.db) == 1
    sessions.close()
    _written(tmp_path / "newer.db", "", version=2)
    with pytest.raises(NewerSchema):
        asyncio.run(Conversations(tmp_path / "newer.db", 1 << 20).open())


def test_a_step_that_fails_leaves_the_file_at_its_version(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    steps = (
        script("CREATE TABLE a (x);"),
        script("CREATE TABLE b (x); INSERT INTO nowhere VALUES (1);"),
    )
    with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):
        migrate(db, steps, tmp_path / "s.db")
    assert version_of(db) == 1  # the first step stands; the second is undone whole
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"a"}
    assert migrate(db, steps[:1], tmp_path / "s.db") == 1


def test_a_script_step_keeps_a_trigger_s_body_whole(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    sql = (
        "CREATE TABLE t (x TEXT);\nCREATE TABLE log (x TEXT);\n"
        "CREATE TRIGGER t_in AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO log VALUES ('a; b');\n  INSERT INTO log VALUES (new.x);\nEND;\n"
    )
    migrate(db, (script(sql),), tmp_path / "t.db")
    db.execute("INSERT INTO t VALUES ('c')")
    assert db.execute("SELECT x FROM log").fetchall() == [("a; b",), ("c",)]
