"""The reaper: what a killed gateway or agent left running is stopped at its next start.

The supervisor records each engine it starts in the node's store (pid, start time, process
group, a tag in its environment) until it ends. An engine dies with its parent
(``PR_SET_PDEATHSIG``), but its children do not (ollama's runners): at start, the gateway
and each agent stop what the rows of an ended owner still name, matched by pid and start
time, or by group and tag, so a pid another process has now is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from modelyard.store import EngineRow, Store

REAP_GRACE = 2.0  # seconds a leftover engine gets between SIGTERM and SIGKILL
TAG = "MODELYARD_ENGINE"  # set in each engine's environment: its children carry it too

log = logging.getLogger("modelyard.reaper")


class ProcStat(NamedTuple):
    """What /proc/PID/stat says of a process."""

    state: str  # R, S, D, Z (a zombie: it has ended), ...
    pgid: int
    started: int  # clock ticks from boot to its start: with the pid, it names one process


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s state, group and start time; None where there is no such process (or /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    # Field 2, the name, is in parentheses and may hold spaces and ')': split after the last.
    fields = text.rsplit(b")", 1)[1].split()
    return ProcStat(fields[0].decode(), int(fields[2]), int(fields[19]))


def running(pid: int, started: int) -> bool:
    """Does the process that started at ``started`` still run under ``pid`` (not a zombie)?"""
    stat = proc_stat(pid)
    return stat is not None and stat.started == started and stat.state not in ("Z", "X")


def boot_id() -> str:
    """This boot's id: start times from another boot name nothing that runs now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _tagged(pid: int, tag: str) -> bool:
    """Does ``pid``'s environment (as it was at exec) carry the engine's tag?"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    return f"{TAG}={tag}".encode() in environ.split(b"\0")


def leftover_processes(row: EngineRow) -> list[tuple[int, int]]:
    """The processes of ``row``'s engine still running, as (pid, start time) pairs.

    The engine itself if its pid still has its start time, with its whole process group;
    if it has gone, the members of its group that carry its tag (its children). A pid that
    started at another time is another process, and then nothing of the engine is left:
    Linux reuses a number only once no process has it as its pid, group or session.
    """
    leader = proc_stat(row.pid)
    if leader is not None and leader.started != row.started:
        return []
    ours = leader is not None  # the engine (maybe a zombie) still holds its group
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = proc_stat(pid)
        if stat is None or stat.pgid != row.pgid or stat.state in ("Z", "X"):
            continue
        if ours or (stat.started >= row.started and _tagged(pid, row.tag)):
            found.append((pid, stat.started))
    return found


def _send(row: EngineRow, members: list[tuple[int, int]], sig: signal.Signals) -> None:
    if running(row.pid, row.started):
        with contextlib.suppress(OSError):  # its own group: reaches children forked since
            os.killpg(row.pgid, sig)
    for pid, started in members:
        if running(pid, started):  # checked at once before: never a pid someone else has now
            with contextlib.suppress(OSError):
                os.kill(pid, sig)


async def _until_gone(processes: Iterable[tuple[int, int]], seconds: float) -> None:
    """Wait until none of ``processes`` runs any more, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while any(running(*p) for p in processes):
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.02)


async def reap_leftovers(store: Store, grace: float = REAP_GRACE) -> list[str]:
    """Stop the engines a previous gateway or agent on ``store`` started and left running.

    Only rows whose owner has ended count (a running owner's engines are its own), and only
    processes matched by pid and start time, or by group and tag (``leftover_processes``).
    SIGTERM, then SIGKILL after ``grace`` seconds. Each engine reaped is an event
    (``reaped``); returns one line for each.
    """
    if proc_stat(os.getpid()) is None:  # no /proc: nothing was recorded either
        return []
    boot = boot_id()
    found: list[tuple[EngineRow, list[tuple[int, int]]]] = []
    for row in store.engines():
        if row.boot == boot and running(row.owner_pid, row.owner_started):
            continue
        members = leftover_processes(row) if row.boot == boot else []
        if members:
            found.append((row, members))
        else:
            store.drop_engine(row.pid, row.started)
    if not found:
        return []
    everyone = [m for _, members in found for m in members]
    for row, members in found:
        _send(row, members, signal.SIGTERM)
    await _until_gone(everyone, grace)
    stubborn = {m for m in everyone if running(*m)}
    for row, members in found:
        _send(row, [m for m in members if m in stubborn], signal.SIGKILL)
    await _until_gone(stubborn, 2)  # SIGKILL is not refused, but takes a moment to land
    lines: list[str] = []
    for row, members in found:
        killed = sum(m in stubborn for m in members)
        how = f"SIGTERM, then SIGKILL after {grace:g}s for {killed}" if killed else "SIGTERM"
        pids = ", ".join(str(pid) for pid, _ in members)
        detail = (
            f"{row.argv0} (pid {row.pid}) left running by pid {row.owner_pid}: "
            f"stopped process(es) {pids} with {how}"
        )
        store.event(row.model, "reaped", detail)
        log.warning("reaped %s: %s", row.model, detail)
        store.drop_engine(row.pid, row.started)
        lines.append(f"{row.model}: {detail}")
    return lines
