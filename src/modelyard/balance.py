"""How a tier picks among its healthy members (pure): ``first`` (their order, the default),
``least_busy`` (by live load) or ``round_robin`` (in turn).

Routing has already turned down the members that cannot serve (policy, health, context);
here the rest are put in the order they are tried. Every member stays a candidate: a
busy or skipped member is still the fallback when the chosen one fails. The reason, with
the loads compared, goes into the decision's trail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """What ``least_busy`` compares of one member, read from live state."""

    ready: bool  # its instance is up: a cold member would have to load first
    in_use: int  # slots serving requests now
    slots: int  # slots it has
    queued: int  # requests waiting for one of them
    gpu: int | None = None  # the busiest of its GPUs, percent (NVML); None: not measured

    @property
    def busy(self) -> float:
        """Requests per slot, the waiting ones included."""
        return (self.in_use + self.queued) / max(self.slots, 1)

    @property
    def rank(self) -> int:
        """0: loaded with a slot free; 1: not loaded (it must load first, which costs more
        than nothing but less than a wait behind full slots); 2: loaded and full."""
        if not self.ready:
            return 1
        return 0 if self.in_use + self.queued < self.slots else 2

    def describe(self) -> str:
        state = "" if self.ready else ", not loaded"
        gpu = f", GPU {self.gpu}%" if self.gpu is not None else ""
        return f"{self.in_use}/{self.slots} slots, {self.queued} queued{gpu}{state}"


IDLE = Load(False, 0, 1, 0)  # a member with no reading: not loaded, nothing running


def pick(
    how: str, members: Sequence[str], loads: Mapping[str, Load], turn: int
) -> tuple[list[str], str | None]:
    """``members`` in the order they are tried, and why (None: ``first``, or one member).

    ``least_busy``: loaded members before cold ones (a cold one must load first, which
    costs more than any queue here), then fewest requests per slot, then the least GPU
    use, then the tier's order. ``round_robin``: the tier's order turned by ``turn`` (how
    many requests the tier has routed so far).
    """
    if how == "first" or len(members) < 2:
        return list(members), None
    if how == "round_robin":
        start = turn % len(members)
        ordered = [*members[start:], *members[:start]]
        return ordered, f"round_robin: turn {turn} → {ordered[0]}"
    order = {m: i for i, m in enumerate(members)}

    def key(member: str) -> tuple[int, float, int, int]:
        load = loads.get(member, IDLE)
        gpu = load.gpu if load.gpu is not None else 0
        return (load.rank, load.busy, gpu, order[member])

    ordered = sorted(members, key=key)
    compared = "; ".join(f"{m} {loads.get(m, IDLE).describe()}" for m in ordered)
    return ordered, f"least_busy: {ordered[0]} ({compared})"
