"""An instance of a model and the places requests hold on it.

The scheduler's loop is the only writer of an ``Instance``; a ``Lease`` is one request's
place on it, handed back exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modelyard.config import Model
from modelyard.engines.base import Upstream
from modelyard.lifecycle import InstanceView, State
from modelyard.placement import Need


@dataclass
class Instance:
    """The loop's own record of one model's instance (mutated only by the loop's actions)."""

    model: str
    node: str = ""  # where it was started: it is stopped there, even if the config moved it
    state: State = State.STOPPED
    since: float = 0.0
    last_used: float = 0.0
    failures: int = 0
    restarts: int = 0  # crashes and failed starts since the gateway began (a counter)
    retry_at: float | None = None
    restart: bool = False
    stop_wanted: bool = False
    error: str | None = None
    keep_alive: float | None = None  # a client's idle time for it (Ollama); None: the ttl
    reason: str = ""  # why it entered its state
    generation: int = 0
    upstream: Upstream | None = None
    pid: int | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    leases: set[Lease] = field(default_factory=set, repr=False)  # one per request in flight

    @property
    def id(self) -> str:
        return f"{self.model}#{self.generation}"

    @property
    def in_flight(self) -> int:
        """Requests running on it: the places they hold, so the count cannot drift."""
        return len(self.leases)

    def view(self, parts: tuple[Need, ...] = ()) -> InstanceView:
        """What ``decide`` sees of it; ``parts``: what it holds on its nodes' GPUs, for a
        model across nodes (the scheduler records them: ``Scheduler.parts``)."""
        return InstanceView(
            self.model,
            self.state,
            self.in_flight,
            self.since,
            self.last_used,
            self.failures,
            self.retry_at,
            self.restart,
            self.stop_wanted,
            self.error,
            self.keep_alive,
            parts,
        )


@dataclass(eq=False)
class Lease:
    """One request's place on an instance, handed back exactly once (``Scheduler.release``).

    ``owner`` is the task of the request that holds it: once that task is done, the place
    must be back; the audit (``Scheduler.audit``) reports and returns any that is not.
    """

    instance: Instance
    owner: asyncio.Task[Any] | None
    since: float  # monotonic: when it was granted
    held: bool = True
    orphaned: float | None = None  # monotonic: when an audit first saw its owner done


def orphaned(instances: Iterable[Instance], now: float) -> list[Lease]:
    """Places held for over a second by requests whose task has ended (those seen so for
    the first time are marked now: one handed back by a done callback may lag a moment)."""
    found = []
    for inst in instances:
        for lease in inst.leases:
            if lease.owner is None or not lease.owner.done():
                continue
            if lease.orphaned is None:
                lease.orphaned = now
            elif now - lease.orphaned > 1.0:
                found.append(lease)
    return found


def slots_of(model: Model) -> int | None:
    """Requests a model serves at once: its `slots`, else llama.cpp's `parallel`, else no cap."""
    return model.slots or model.engine_slots


def unavailable(instances: Iterable[Instance], now: float) -> dict[str, str]:
    """Models that failed and may not be tried now, with why (routing skips them)."""
    return {
        inst.model: f"failed: {inst.error}"
        for inst in instances
        if inst.state is State.FAILED and (inst.retry_at is None or inst.retry_at > now)
    }
