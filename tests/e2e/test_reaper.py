"""The reaper and the engine records it reads, with real processes and a real store.

A process is named by its pid and start time together; the reaper stops what a dead
gateway or agent left, and nothing else: not a pid another process has now, not the
engines of an owner that still runs, not a process of the same group without the tag.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import parse_config
from modelyard.engines.base import Engine
from modelyard.engines.catalog import engine_for
from modelyard.reaper import TAG, boot_id, proc_stat, reap_leftovers, running
from modelyard.store import EngineRow, Store
from modelyard.supervisor import Supervisor
from tests.conftest import SLOW_UPSTREAM

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

# A process that ignores SIGTERM (as an engine hung in its shutdown does) and says when.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ok', flush=True); time.sleep(120)"
)
# An engine that starts two such children in its group: one inherits its environment
# (with the tag), one is started with an empty one; it prints their pids once both run.
PARENT = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kids = [
    subprocess.Popen([sys.executable, "-c", {STUBBORN!r}], stdout=subprocess.PIPE),
    subprocess.Popen([sys.executable, "-c", {STUBBORN!r}], stdout=subprocess.PIPE, env={{}}),
]
for kid in kids:
    kid.stdout.readline()
print(" ".join(str(kid.pid) for kid in kids), flush=True)
time.sleep(120)
"""


@pytest.fixture
def procs() -> Iterator[list[int]]:
    """pids to SIGKILL after the test, whatever became of them."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        stat = proc_stat(pid)
        if stat is not None and stat.state != "Z":
            os.kill(pid, signal.SIGKILL)


def engine(tag: str, procs: list[int]) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A stubborn engine in a session of its own, as the supervisor starts one, and the pids
    of its two children (tagged, untagged)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        env={**os.environ, TAG: tag},
        start_new_session=True,
    )
    assert proc.stdout is not None
    kids = [int(pid) for pid in proc.stdout.readline().split()]
    procs += [proc.pid, *kids]
    return proc, kids


def stubborn(procs: list[int]) -> subprocess.Popen[bytes]:
    """A process that is not an engine of ours, leading a group of its own as engines do."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    procs.append(proc.pid)
    return proc


def gone(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is None or stat.state == "Z"


def group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    return [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit()
        and (s := proc_stat(int(p))) is not None
        and s.pgid == pgid
        and s.state != "Z"
    ]


def environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().split(b"\0")


def started(pid: int) -> int:
    stat = proc_stat(pid)
    assert stat is not None
    return stat.started


def dead_owner() -> tuple[int, int]:
    """The pid and start time of a gateway that has ended."""
    proc = subprocess.Popen(["sleep", "30"])
    owner = (proc.pid, started(proc.pid))
    proc.kill()
    proc.wait()
    return owner


def row(pid: int, tag: str = "t", **kw: object) -> EngineRow:
    owner_pid, owner_started = dead_owner()
    values: dict[str, object] = {
        "pid": pid,
        "started": started(pid),
        "pgid": pid,
        "boot": boot_id(),
        "model": "m",
        "argv0": sys.executable,
        "tag": tag,
        "owner_pid": owner_pid,
        "owner_started": owner_started,
    }
    values.update(kw)
    return EngineRow(**values)  # type: ignore[arg-type]


def test_proc_stat_reads_group_and_start_time_whatever_the_name(procs: list[int]) -> None:
    named = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); " + (
        "print('ok', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", named], stdout=subprocess.PIPE)
    procs.append(proc.pid)
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    with open(f"/proc/{proc.pid}/stat") as f:
        assert f.read().startswith(f"{proc.pid} (a) b (c) ")  # the name that fools a split
    stat = proc_stat(proc.pid)
    assert stat is not None and stat.state in ("R", "S") and stat.pgid == os.getpgid(proc.pid)
    assert stat.started >= started(os.getpid())
    assert running(proc.pid, stat.started) and not running(proc.pid, stat.started + 1)
    proc.kill()
    proc.wait()
    assert proc_stat(proc.pid) is None and not running(proc.pid, stat.started)


async def test_reaper_stops_a_leftover_engine_and_its_whole_group(
    tmp_path: Path, procs: list[int]
) -> None:
    store = Store(tmp_path / "s.db")
    leader, kids = engine("tag1", procs)
    store.add_engine(row(leader.pid, "tag1"))
    began = time.monotonic()
    lines = await reap_leftovers(store, grace=0.3)
    took = time.monotonic() - began
    leader.wait(5)
    # Its own group: both children go, the one without the tag too.
    assert all(gone(pid) for pid in kids)
    assert len(lines) == 1 and took < 3, (lines, took)
    event = store.events("m")[0]
    assert event["event"] == "reaped" and "SIGKILL after 0.3s for 3" in event["detail"], event
    assert store.engines() == []
    await store.close()


async def test_reaper_stops_the_tagged_children_of_an_engine_gone_before(
    tmp_path: Path, procs: list[int]
) -> None:
    """The death signal killed the engine but not its children: those that carry its tag
    are reaped; a process in the group without it is not known to be the engine's."""
    store = Store(tmp_path / "s.db")
    leader, (tagged, untagged) = engine("tag2", procs)
    store.add_engine(row(leader.pid, "tag2"))
    leader.kill()
    leader.wait()
    assert proc_stat(leader.pid) is None
    lines = await reap_leftovers(store, grace=0.3)
    assert len(lines) == 1 and f"process(es) {tagged} " in lines[0], lines
    assert gone(tagged) and not gone(untagged)
    assert store.engines() == []
    await store.close()


async def test_reaper_spares_a_pid_that_another_process_has_now(
    tmp_path: Path, procs: list[int]
) -> None:
    store = Store(tmp_path / "s.db")
    other = stubborn(procs)
    store.add_engine(row(other.pid, started=started(other.pid) - 1))  # the pid was reused
    assert await reap_leftovers(store, grace=0.3) == []
    assert running(other.pid, started(other.pid))
    assert store.engines() == [] and store.events() == []
    await store.close()


async def test_reaper_leaves_the_engines_of_a_running_owner_alone(
    tmp_path: Path, procs: list[int]
) -> None:
    """Another gateway or agent on the same store that runs now: its engines are its own."""
    store = Store(tmp_path / "s.db")
    other = stubborn(procs)
    mine = row(other.pid, owner_pid=os.getpid(), owner_started=started(os.getpid()))
    store.add_engine(mine)
    assert await reap_leftovers(store, grace=0.3) == []
    assert running(other.pid, started(other.pid))
    assert store.engines() == [mine]
    await store.close()


async def test_rows_of_another_boot_name_nothing_that_runs(
    tmp_path: Path, procs: list[int]
) -> None:
    store = Store(tmp_path / "s.db")
    other = stubborn(procs)
    store.add_engine(row(other.pid, boot="another-boot"))
    assert await reap_leftovers(store, grace=0.3) == []
    assert running(other.pid, started(other.pid))
    assert store.engines() == []
    await store.close()


def command_engine(*args: str) -> Engine:
    argv = ", ".join([sys.executable, str(SLOW_UPSTREAM), "--port", "'{port}'", *args])
    config = parse_config(f"models:\n  m:\n    engine: command\n    command: [{argv}]\n", "f", {})
    return engine_for(config.models["m"])


async def test_supervisor_records_each_engine_while_it_runs(
    tmp_path: Path, procs: list[int]
) -> None:
    store = Store(tmp_path / "s.db")
    sup = Supervisor(tmp_path / "logs", lambda m, code: None, 0.5, store)
    _, pid = await sup.start("m", command_engine(), 30)
    assert pid is not None
    procs.append(pid)
    [rec] = store.engines()
    stat = proc_stat(pid)
    assert stat is not None
    assert (rec.pid, rec.started, rec.pgid, rec.model, rec.argv0) == (
        pid,
        stat.started,
        pid,
        "m",
        sys.executable,
    )
    assert (rec.owner_pid, rec.owner_started) == (os.getpid(), started(os.getpid()))
    assert f"{TAG}={rec.tag}".encode() in environ(pid)
    await sup.stop("m", "test")
    assert store.engines() == []
    await sup.close()
    await store.close()


async def test_a_crash_is_seen_at_once_and_the_engines_children_go_with_it(
    tmp_path: Path, procs: list[int]
) -> None:
    """Its child holds the engine's output pipe open: the crash is seen all the same (not
    when the pipe closes), the child is killed, and the row goes."""
    store = Store(tmp_path / "s.db")
    exits: list[int] = []
    sup = Supervisor(tmp_path / "logs", lambda m, code: exits.append(code), 0.5, store)
    _, pid = await sup.start("m", command_engine("--child"), 30)
    assert pid is not None and len(store.engines()) == 1
    [child] = [p for p in group(pid) if p != pid]
    procs += [pid, child]
    os.kill(pid, signal.SIGKILL)
    for _ in range(40):
        if exits:
            break
        await asyncio.sleep(0.05)
    assert exits == [-signal.SIGKILL], "the crash was not seen within 2 s"
    assert gone(child) and store.engines() == []
    await sup.close()
    await store.close()


async def test_stop_kills_the_whole_group_after_the_grace(tmp_path: Path, procs: list[int]) -> None:
    """An engine and its child that both ignore SIGTERM: SIGKILL for both after the grace."""
    store = Store(tmp_path / "s.db")
    sup = Supervisor(tmp_path / "logs", lambda m, code: None, 0.5, store)
    engine = command_engine("--ignore-sigterm", "--child")
    _, pid = await sup.start("m", engine, 30)
    assert pid is not None
    members = group(pid)
    procs += members
    assert len(members) == 2, members  # the engine and its child
    began = time.monotonic()
    await sup.stop("m", "test")
    assert 0.5 <= time.monotonic() - began < 3
    assert all(gone(p) for p in members)
    assert store.engines() == []
    await sup.close()
    await store.close()
