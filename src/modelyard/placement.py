"""Placement: may a model start beside what runs, and what must stop first (pure).

Today the only limit is the swap group: its members never run together. Memory-aware
placement across GPUs and nodes extends this same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resident:
    """A model that holds resources now (starting, ready, draining or stopping)."""

    model: str
    pinned: bool
    swap_group: str | None


@dataclass(frozen=True)
class Eviction:
    """What starting ``target`` requires: the residents to stop, or why it cannot start."""

    target: str
    victims: tuple[str, ...] = ()
    blocked_by: tuple[str, ...] = field(default=())

    @property
    def possible(self) -> bool:
        return not self.blocked_by

    def explain(self) -> str:
        if self.blocked_by:
            return (
                f"{self.target} cannot start: pinned {', '.join(self.blocked_by)} "
                f"holds its swap group"
            )
        if self.victims:
            return f"{self.target} starts after {', '.join(self.victims)} stops (swap group)"
        return f"{self.target} starts beside what runs"


def plan_eviction(
    target: str, target_group: str | None, residents: Mapping[str, Resident]
) -> Eviction:
    """Residents that must stop before ``target`` may start; pinned ones block instead."""
    if target_group is None:
        return Eviction(target)
    conflicts = sorted(
        r.model for r in residents.values() if r.swap_group == target_group and r.model != target
    )
    pinned = tuple(m for m in conflicts if residents[m].pinned)
    if pinned:
        return Eviction(target, blocked_by=pinned)
    return Eviction(target, victims=tuple(conflicts))
