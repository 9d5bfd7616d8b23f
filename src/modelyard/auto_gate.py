"""A gate that closes by itself (``nodes.NAME.auto_mode``): the node enters its auto mode
(gated or drained) while another program uses its GPU, and goes back once that program is
gone for ``leave_after``.

``Reading``: what holds now, measured on the node itself: GPU memory used by processes that
are not modelyard's (NVML's process list, or the ``gpus_file`` another program writes), and
which of the named processes run (``/proc``). ``AutoGate.step`` (pure) decides: it enters
only from the node's first mode (its everyday open mode), leaves only a mode it entered,
and a mode a person sets wins: after one, it acts again only once the node is back in its
first mode by a person's hand. After a restart, a node found in another mode is left as it
is (nobody can tell who chose it). Each change carries its reason, which the node's owner
(the gateway for its own node, the agent for its) records as an event.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.gpus import GpuProcess
from modelyard.units import format_bytes, format_duration

if TYPE_CHECKING:
    from modelyard.config.node_spec import AutoMode


@dataclass(frozen=True)
class Reading:
    """What the auto mode's conditions read on the node now."""

    other_memory: Mapping[int, int]  # GPU index → bytes held by programs not modelyard's
    running: tuple[str, ...] = ()  # the named processes found running


def why(auto: AutoMode, reading: Reading) -> str | None:
    """Why the auto mode holds now, or None."""
    if reading.running:
        return f"{reading.running[0]} is running"
    limit = auto.other_gpu_memory
    if limit is not None:
        for gpu, used in sorted(reading.other_memory.items()):
            if used > limit:
                return (
                    f"programs other than modelyard's use {format_bytes(used)} of GPU {gpu} "
                    f"(more than {format_bytes(limit)})"
                )
    return None


@dataclass
class AutoGate:
    """The auto mode's state on one node."""

    base: str  # the node's first mode: entered from, returned to
    entered: bool = False  # the node's mode now was entered by this gate
    manual: bool = False  # a person set a mode other than ``base``: hands off
    last_seen: float = 0.0  # monotonic: the last time its conditions held
    reason: str | None = None  # why it entered

    def set_by_hand(self, mode: str) -> None:
        """A person set ``mode``: it wins; back in ``base``, the gate watches again."""
        self.entered, self.manual, self.reason = False, mode != self.base, None

    def step(
        self, auto: AutoMode, mode: str, holds: str | None, now: float
    ) -> tuple[str, str] | None:
        """The mode to enter now and why, or None."""
        if self.manual:
            return None
        if holds is not None:
            self.last_seen = now
            if mode == self.base and not self.entered:
                self.entered, self.reason = True, holds
                return auto.mode, f"auto: {holds}"
            return None
        if self.entered and mode == auto.mode and now - self.last_seen >= auto.leave_after:
            self.entered = False
            gone = f"gone for {format_duration(auto.leave_after)}"
            return self.base, f"auto: {gone} ({self.reason})"
        return None


def read(
    auto: AutoMode,
    processes: Iterable[GpuProcess],
    ours: Collection[int],
    proc: Path = Path("/proc"),
) -> Reading:
    """The reading now: GPU memory of the processes not in ``ours`` (process groups of
    modelyard's engines), and which of ``auto.processes`` run."""
    other: dict[int, int] = {}
    for p in processes:
        if p.pid in ours or _group(p.pid) in ours:
            continue
        other[p.gpu] = other.get(p.gpu, 0) + p.used
    running = running_names(auto.processes, proc) if auto.processes else ()
    return Reading(other, running)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # gone, or another namespace's: not one of ours
        return None


def running_names(patterns: Collection[str], proc: Path = Path("/proc")) -> tuple[str, ...]:
    """The processes running now whose name (or program's file name) matches a pattern."""
    found: list[str] = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        names = []
        with contextlib.suppress(OSError):
            names.append((entry / "comm").read_text().strip())
        with contextlib.suppress(OSError):
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            names.append(os.path.basename(argv0.decode(errors="replace")))
        for name in names:
            if name and any(fnmatch.fnmatchcase(name, p) for p in patterns):
                found.append(name)
                break
    return tuple(dict.fromkeys(found))
