"""What the bench scripts read about a process, and the machine, from /proc (Linux only).

CPU seconds (utime + stime, at clock-tick resolution) of a process or of each of its threads;
the memory and thread counts of /proc/PID/status; open file descriptors; the parent; whether
it still runs; its command line; the CPU's model name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str]:
    """The fields of a ``stat`` file after the command name, which may hold spaces and ')'."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``."""
    return _cpu(_stat_fields(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """(name, CPU seconds) of each thread of ``pid``; a thread that ends meanwhile is left out."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = stat.split("(", 1)[1].rsplit(")", 1)[0]
            out[int(tid)] = (name, _cpu(stat.rsplit(")", 1)[1].split()))
    return out


def status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status: those in kB (VmRSS, RssAnon…) in bytes, the
    plain counts (Threads…) as they are."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
            elif len(parts) == 1 and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parent_of(pid: int) -> int:
    return int(_stat_fields(f"/proc/{pid}/stat")[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie."""
    try:
        return _stat_fields(f"/proc/{pid}/stat")[0] != "Z"
    except OSError:
        return False


def arguments(pid: int) -> list[str]:
    """The command line of ``pid`` without the program itself."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[1:-1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for the machine line of a report."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"
