"""A machine's CPU and memory, read from Linux's ``/proc`` with the standard library alone.

``MachineSampler.sample()`` gives a ``Machine``: the share of CPU time that was busy since
the previous sample (None on the first, which only sets the baseline), the CPU count, the
1-minute load average, and memory total and available in bytes. Where ``/proc`` is not
there (macOS, Windows) every field is None. The parsers are pure: tests feed them text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# Fields of /proc/stat's "cpu" line that are idle time: idle and iowait (proc(5)). guest
# and guest_nice are already counted in user and nice, so they are left out of the total.
_IDLE = (3, 4)
_COUNTED = 8  # user nice system idle iowait irq softirq steal


@dataclass(frozen=True, slots=True)
class Machine:
    """One reading of a machine; None where it could not be read."""

    cpu_percent: float | None = None  # busy share of all CPUs since the last sample, 0 to 100
    cpus: int | None = None
    load1: float | None = None
    memory_total: int | None = None  # bytes
    memory_available: int | None = None  # bytes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Machine | None:
        """What an agent reported (None if it reported nothing, as an older agent does)."""
        if not isinstance(data, dict):
            return None

        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)

        def whole(key: str) -> int | None:
            value = number(key)
            return int(value) if value is not None else None

        return cls(
            number("cpu_percent"),
            whole("cpus"),
            number("load1"),
            whole("memory_total"),
            whole("memory_available"),
        )


def parse_stat(text: str) -> tuple[tuple[int, int] | None, int | None]:
    """``/proc/stat``: (busy, total) jiffies of all CPUs together, and the CPU count."""
    times: tuple[int, int] | None = None
    cpus = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu"):
            continue
        if fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1 : 1 + _COUNTED]]
            except ValueError:
                continue
            total = sum(values)
            idle = sum(values[i] for i in _IDLE if i < len(values))
            times = (total - idle, total)
        elif fields[0][3:].isdigit():
            cpus += 1
    return times, cpus or None


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """``/proc/meminfo``: memory total and available, in bytes (kernels before 3.14 have no
    MemAvailable: free, buffers and page cache stand in for it)."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kib[key.strip()] = int(parts[0])
    total = kib.get("MemTotal")
    available = kib.get("MemAvailable")
    if available is None and "MemFree" in kib:
        available = kib["MemFree"] + kib.get("Buffers", 0) + kib.get("Cached", 0)
    return (
        total * 1024 if total is not None else None,
        available * 1024 if available is not None else None,
    )


def parse_loadavg(text: str) -> float | None:
    """``/proc/loadavg``: the 1-minute load average."""
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return None


def busy_percent(before: tuple[int, int], now: tuple[int, int]) -> float | None:
    """The busy share between two (busy, total) readings, 0 to 100; None if no time passed."""
    busy, total = now[0] - before[0], now[1] - before[1]
    if total <= 0:
        return None
    return round(min(max(busy / total, 0.0), 1.0) * 100, 1)


class MachineSampler:
    """Reads ``root`` (``/proc``) each ``sample()``; the CPU share is since the last one."""

    def __init__(self, root: Path = PROC) -> None:
        self.root = root
        self._times: tuple[int, int] | None = None
        self._percent: float | None = None

    def _read(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text(encoding="ascii", errors="replace")
        except OSError:
            return None

    def sample(self) -> Machine:
        stat, meminfo, loadavg = self._read("stat"), self._read("meminfo"), self._read("loadavg")
        times, cpus = parse_stat(stat) if stat is not None else (None, None)
        if times is not None:
            if self._times is not None:
                share = busy_percent(self._times, times)
                if share is not None:  # two samples in the same tick: keep the last share
                    self._percent = share
            self._times = times
        total, available = parse_meminfo(meminfo) if meminfo is not None else (None, None)
        load1 = parse_loadavg(loadavg) if loadavg is not None else None
        return Machine(self._percent, cpus, load1, total, available)
