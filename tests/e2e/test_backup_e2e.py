"""``modelyard backup`` and ``restore`` (the real CLI) against a real gateway under load:
the backup is one consistent snapshot while requests are being logged, it restores to a
store with every row it holds, into a new state dir or under the running gateway, and
a file that is not a good backup changes nothing."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServedGateway, stub_model, write_config

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args], capture_output=True, text=True, timeout=120
    )


def rows(db: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def load(gw: ServedGateway, stop: threading.Event, sent: list[int]) -> None:
    """Requests one after another, four at a time, until ``stop``."""

    def one() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                said = client.post(
                    gw.url + "/v1/chat/completions",
                    json={"model": "m", "messages": HELLO, "max_tokens": 4},
                )
                sent.append(said.status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_backup_under_load_restores_every_row(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, stub_model("m", slots=4))
    gw: ServedGateway = serve(config)
    state = tmp_path / "state"
    made = httpx.post(gw.url + "/console/api/conversations", json={"title": "kept"}, timeout=10)
    assert made.status_code in (200, 201), made.text
    stop, sent = threading.Event(), []
    loader = threading.Thread(target=load, args=(gw, stop, sent))
    loader.start()
    try:
        deadline = time.monotonic() + 30
        while len(rows(state / "modelyard.db", "request_log")) < 20:  # rows are being written
            assert time.monotonic() < deadline, "no request rows written"
            time.sleep(0.2)
        taken = cli("backup", str(tmp_path / "b.tar"), "-c", str(config), "--json")
        assert taken.returncode == 0, taken.stderr
        time.sleep(0.5)  # more rows after the backup
    finally:
        stop.set()
        loader.join(60)
    assert set(sent) == {200}
    manifest = json.loads(taken.stdout)
    held = manifest["files"]["modelyard.db"]["rows"]
    assert (
        held["request_log"] >= 20
        and manifest["files"]["conversations.db"]["rows"]["conversations"] == 1
    )
    time.sleep(1.5)  # the store writes its rows within a second
    live = rows(state / "modelyard.db", "request_log")
    assert len(live) > held["request_log"]  # the load went on while it was taken

    # Into a new state dir: every row it holds, and they are the live ones up to its
    # moment (one snapshot: the first rows of the live table, none torn or missing).
    other = tmp_path / "other.yaml"
    other.write_text(
        config.read_text().replace(str(state), str(tmp_path / "restored")), encoding="utf-8"
    )
    put = cli("restore", str(tmp_path / "b.tar"), "-c", str(other), "--yes")
    assert put.returncode == 0, put.stderr
    restored = tmp_path / "restored"
    back = rows(restored / "modelyard.db", "request_log")
    assert len(back) == held["request_log"] and back == live[: len(back)]
    for table, count in held.items():
        if table != "engines":  # a new state's engines: none (they were the gateway's)
            assert len(rows(restored / "modelyard.db", table)) == count, table
    titles = [r[3] for r in rows(restored / "conversations.db", "conversations")]
    assert "kept" in titles

    # Under the running gateway: it goes on serving, its engine stays recorded.
    engines = rows(state / "modelyard.db", "engines")
    assert engines
    put = cli("restore", str(tmp_path / "b.tar"), "-c", str(config), "--yes")
    assert put.returncode == 0, put.stderr
    assert rows(state / "modelyard.db", "engines") == engines
    said = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "m", "messages": HELLO, "max_tokens": 4},
        timeout=30,
    )
    assert said.status_code == 200
    time.sleep(1.5)
    after = rows(state / "modelyard.db", "request_log")
    assert after[: len(back)] == back and len(after) == len(back) + 1


def _tar(path: Path, manifest: dict[str, object], files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_file_that_is_not_a_good_backup_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, stub_model("m"))
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "modelyard.db") as db:
        db.execute("CREATE TABLE mine (x)")
    before = (state / "modelyard.db").read_bytes()
    good = tmp_path / "good.tar"
    taken = cli("backup", str(good), "-c", str(config))
    assert taken.returncode == 0, taken.stderr
    with tarfile.open(good) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        data = tar.extractfile("modelyard.db").read()  # type: ignore[union-attr]

    newer = json.loads(json.dumps(manifest))
    newer["files"]["modelyard.db"]["schema"] = 99
    _tar(tmp_path / "newer.tar", newer, {"modelyard.db": data})
    _tar(tmp_path / "tampered.tar", manifest, {"modelyard.db": data[:-1] + b"x"})
    _tar(tmp_path / "other.tar", {"format": "something-else"}, {})
    with tarfile.open(tmp_path / "huge.tar", "w") as tar:  # a manifest of 2 MiB: not read
        big = b" " * (2 << 20) + json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
    cases = {
        config: "is not a modelyard backup",
        tmp_path / "other.tar": "is not a modelyard backup",
        tmp_path / "huge.tar": "is not a modelyard backup",
        tmp_path / "newer.tar": "its modelyard.db has schema version 99, written by a newer",
        tmp_path / "tampered.tar": "modelyard.db is damaged",
        tmp_path / "absent.tar": "is not a modelyard backup",
    }
    for file, why in cases.items():
        put = cli("restore", str(file), "-c", str(config), "--yes")
        assert put.returncode == 1 and why in put.stderr, (file, put.stderr)
        assert "nothing was changed" in put.stderr
        assert (state / "modelyard.db").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["modelyard.db"]  # no leftovers
