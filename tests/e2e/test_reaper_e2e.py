"""No engine outlives the gateway or agent that started it, whatever it does with SIGTERM.

The engines here are tests/slow_upstream.py with ``--ignore-sigterm`` (an engine hung in
its own shutdown) and ``--child`` (a child in its process group, as ollama's runners are,
that ignores SIGTERM too). The gateway and the agent are killed with SIGKILL: the engine
dies with them (its death signal is SIGKILL); its child, which no death signal reaches, is
stopped by the next start of the gateway or agent (the reaper), and only it: a recorded
pid that another process has now is left alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.reaper import boot_id, proc_stat
from modelyard.store import EngineRow, Store
from tests.conftest import (
    alive,
    children_of,
    free_port,
    stub_model,
    wait_healthy,
    write_config,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc"),
]
GRACE = "scheduler:\n  stop_grace: 1"  # the stops at the end of each test are short
TOKEN = "reaper-token"


def wait_until(check: Any, what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def child_of(pid: int) -> int:
    """The child the engine started with ``--child``."""
    wait_until(lambda: children_of(pid), "the engine started no child")
    [child] = children_of(pid)
    return child


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """pids a failed test may leave running: SIGKILLed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_engine_that_ignores_sigterm_dies_with_its_killed_gateway(
    serve: Any, tmp_path: Path, leftovers: list[int]
) -> None:
    config = write_config(tmp_path, stub_model("stubborn", "--ignore-sigterm"), GRACE)
    gw = serve(config)
    gw.admin("POST", "/admin/models/stubborn/start").raise_for_status()
    engine = gw.model("stubborn")["pid"]
    assert engine is not None
    leftovers.append(engine)
    os.kill(engine, signal.SIGTERM)
    time.sleep(0.3)
    assert alive(engine), "the stub did not ignore SIGTERM"

    gw.proc.kill()
    gw.proc.wait(10)
    wait_until(lambda: not alive(engine), "the engine outlived its gateway (killed with -9)")


def test_a_gateway_reaps_what_its_killed_predecessor_left(
    serve: Any, tmp_path: Path, leftovers: list[int]
) -> None:
    config = write_config(tmp_path, stub_model("stubborn", "--ignore-sigterm", "--child"), GRACE)
    gw = serve(config)
    gw.admin("POST", "/admin/models/stubborn/start").raise_for_status()
    engine = gw.model("stubborn")["pid"]
    child = child_of(engine)
    leftovers += [engine, child]

    gw.proc.kill()
    gw.proc.wait(10)
    wait_until(lambda: not alive(engine), "the engine outlived its gateway (killed with -9)")
    assert alive(child)  # a death signal reaches the engine only, not its children

    began = time.monotonic()
    again = serve(config)  # reaps before it answers /health
    wait_until(lambda: not alive(child), "the restarted gateway left the child running")
    took = time.monotonic() - began
    reaped = [
        e for e in again.admin("GET", "/admin/status").json()["events"] if e["event"] == "reaped"
    ]
    assert len(reaped) == 1 and reaped[0]["model"] == "stubborn", reaped
    assert f"process(es) {child} with SIGTERM, then SIGKILL" in reaped[0]["detail"], reaped
    assert took < 15, took
    again.admin("POST", "/admin/models/stubborn/start").raise_for_status()  # it serves again


def test_a_gateway_spares_a_recorded_pid_that_another_process_has_now(
    serve: Any, tmp_path: Path, leftovers: list[int]
) -> None:
    """A row whose pid runs, but started at another time: not the engine, left alone."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group of its own
    leftovers.append(other.pid)
    gone = subprocess.Popen(["sleep", "60"])  # the gateway that wrote the row, dead since
    gone_stat = proc_stat(gone.pid)
    gone.kill()
    gone.wait()
    stat = proc_stat(other.pid)
    assert stat is not None and gone_stat is not None
    config = write_config(tmp_path, stub_model("stubborn"), GRACE)
    store = Store(tmp_path / "state" / "modelyard.db")
    store.add_engine(
        EngineRow(
            pid=other.pid,
            started=stat.started - 1,  # as if the pid had been reused since
            pgid=other.pid,
            boot=boot_id(),
            model="stubborn",
            argv0="sleep",
            tag="t",
            owner_pid=gone.pid,
            owner_started=gone_stat.started,
        )
    )
    asyncio.run(store.close())

    gw = serve(config)
    assert alive(other.pid)
    events = gw.admin("GET", "/admin/status").json()["events"]
    assert not [e for e in events if e["event"] == "reaped"], events
    db = sqlite3.connect(tmp_path / "state" / "modelyard.db")
    assert db.execute("SELECT COUNT(*) FROM engines").fetchone() == (0,)  # forgotten
    db.close()
    other.kill()
    other.wait()


def test_an_agent_reaps_what_its_killed_predecessor_left(
    tmp_path: Path, leftovers: list[int]
) -> None:
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\n"
        f"state_dir: {tmp_path / 'gateway'}\n"
        "nodes:\n"
        "  server: {gpus: []}\n"
        "  box:\n"
        f"    url: http://127.0.0.1:{port}\n"
        f"    token: {TOKEN}\n"
        "    gpus: []\n"
        f"    state_dir: {tmp_path / 'box'}\n"
        f"{GRACE}\n"
        "models:\n" + stub_model("stubborn", "--ignore-sigterm", "--child", node="box"),
        encoding="utf-8",
    )
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "agent.log"

    def start_agent() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "agent", "-c", str(config), "--node", "box"],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(url, proc, log.read_text)
        return proc

    agent = start_agent()
    try:
        resp = httpx.post(
            url + "/agent/instances/stubborn/start",
            json={},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        engine = int(resp.json()["pid"])
        child = child_of(engine)
        leftovers += [engine, child]

        agent.kill()
        agent.wait(10)
        wait_until(lambda: not alive(engine), "the engine outlived its agent (killed with -9)")
        assert alive(child)

        agent = start_agent()
        wait_until(lambda: not alive(child), "the restarted agent left the child running")
        db = sqlite3.connect(tmp_path / "box" / "modelyard.db")
        reaped = db.execute("SELECT model, detail FROM events WHERE event = 'reaped'").fetchall()
        assert db.execute("SELECT COUNT(*) FROM engines").fetchone() == (0,)
        db.close()
        assert len(reaped) == 1 and reaped[0][0] == "stubborn", reaped
        assert f"process(es) {child} with" in reaped[0][1], reaped
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
