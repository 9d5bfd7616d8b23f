"""The GPU lease: models on a serial GPU (or sharing a ``serial:`` name) take turns.

S2 runs a TTS model beside a small LLM on one 8 GB GPU and needs them never to run at once.
A lease is held by one model at a time: any number of that model's requests may hold it
together (its own slots decide how many), while a request of another model waits until
every holder has finished. Waiting is first come, first served: a request never overtakes
one that arrived before it and waits for a lease it needs, even if the model now holding
the lease is its own, so neither side starves the other.

A request takes its leases after its slot and before it is forwarded, and gives them back
with the slot when its answer ends (``gateway/attempt.py``). Which waiters go next is the
pure :func:`grantable`; :class:`GpuLeases` keeps the holders and the line, and is driven by
the request tasks themselves (take, release), with no await between a read and its write.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from modelyard.errors import Code, Refused


class Ask(NamedTuple):
    """A request waiting for leases: its model and the leases it needs, all at once."""

    id: int
    model: str
    leases: tuple[str, ...]


def grantable(waiting: Sequence[Ask], holders: Mapping[str, str]) -> list[int]:
    """The ids of ``waiting`` (in arrival order) that may take their leases now.

    ``holders`` maps each held lease to the model holding it. A waiter goes when every
    lease it needs is free or held by its own model, and no waiter before it is still
    waiting for one of those leases (first come, first served).
    """
    held = dict(holders)
    blocked: set[str] = set()  # leases an earlier waiter still waits for
    out: list[int] = []
    for ask in waiting:
        mine = (held.get(name, ask.model) == ask.model for name in ask.leases)
        if all(mine) and blocked.isdisjoint(ask.leases):
            out.append(ask.id)
            held.update((name, ask.model) for name in ask.leases)
        else:
            blocked.update(ask.leases)
    return out


@dataclass(eq=False)
class Hold:
    """A request's leases: given back once with :meth:`GpuLeases.release`."""

    model: str
    leases: tuple[str, ...]
    owner: asyncio.Task[Any] | None
    since: float
    held: bool = True


@dataclass(eq=False)
class _Waiter:
    ask: Ask
    future: asyncio.Future[Hold]
    owner: asyncio.Task[Any] | None
    since: float = field(default_factory=time.monotonic)


class GpuLeases:
    """The holders and the line of every lease of the gateway."""

    def __init__(self) -> None:
        self._holds: dict[str, list[Hold]] = {}  # lease → its holders (all one model)
        self._line: list[_Waiter] = []
        self._ids = itertools.count(1)
        self.on_wait: Callable[[str, float], None] | None = None  # (lease, seconds waited)
        self.leaks = 0

    async def take(self, model: str, leases: tuple[str, ...], timeout: float | None) -> Hold | None:
        """Wait for ``leases`` (none: returns None at once); raises Refused on timeout."""
        if not leases:
            return None
        owner = asyncio.current_task()
        ask = Ask(next(self._ids), model, leases)
        if not self._line and grantable([ask], self._holders()):
            return self._grant(ask, owner, 0.0)
        waiter = _Waiter(ask, asyncio.get_running_loop().create_future(), owner)
        self._line.append(waiter)
        self._wake()  # behind others in line, but maybe not behind any on its leases
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except TimeoutError:
            self._forget(waiter)
            raise Refused(
                Code.MODEL_UNAVAILABLE,
                f"{model} waited {timeout:g}s for its turn on {', '.join(leases)}, "
                f"held by {self._holding(leases)}",
                5.0,
                timed_out=True,
            ) from None
        except asyncio.CancelledError:
            self._forget(waiter)
            raise

    def release(self, hold: Hold | None) -> None:
        """Give ``hold``'s leases back; a second call does nothing."""
        if hold is None or not hold.held:
            return
        hold.held = False
        for name in hold.leases:
            holders = self._holds.get(name, [])
            if hold in holders:
                holders.remove(hold)
            if not holders:
                self._holds.pop(name, None)
        self._wake()

    def audit(self, now: float) -> int:
        """Hand back holds whose request ended over a second ago without giving them back."""
        stale = [
            h
            for holders in self._holds.values()
            for h in holders
            if h.owner is not None and h.owner.done() and now - h.since > 1.0
        ]
        for hold in dict.fromkeys(stale):
            self.leaks += 1
            self.release(hold)
        return len(stale)

    def view(self, now: float) -> list[dict[str, Any]]:
        """Each lease in use or waited for: who holds it, since when, and the line."""
        names = sorted({*self._holds, *(n for w in self._line for n in w.ask.leases)})
        out = []
        for name in names:
            holders = self._holds.get(name, [])
            waiting = [w for w in self._line if name in w.ask.leases]
            out.append(
                {
                    "lease": name,
                    "holder": holders[0].model if holders else None,
                    "holding": len(holders),
                    "held_s": round(now - min(h.since for h in holders), 3) if holders else None,
                    "waiting": [w.ask.model for w in waiting],
                    "longest_wait_s": round(now - waiting[0].since, 3) if waiting else None,
                }
            )
        return out

    # -- inside -------------------------------------------------------------------------------

    def _holders(self) -> dict[str, str]:
        return {name: holders[0].model for name, holders in self._holds.items() if holders}

    def _holding(self, leases: Iterable[str]) -> str:
        who = {self._holders().get(n) for n in leases} - {None}
        return ", ".join(sorted(str(w) for w in who)) or "nobody (others were first in line)"

    def _grant(self, ask: Ask, owner: asyncio.Task[Any] | None, waited: float) -> Hold:
        hold = Hold(ask.model, ask.leases, owner, time.monotonic())
        for name in ask.leases:
            self._holds.setdefault(name, []).append(hold)
            if self.on_wait is not None:
                self.on_wait(name, waited)
        return hold

    def _wake(self) -> None:
        # A cancelled waiter stays in line until its task runs ``_forget``: not counted.
        line = [w for w in self._line if not w.future.done()]
        if not line:
            return
        go = set(grantable([w.ask for w in line], self._holders()))
        if not go:
            return
        now = time.monotonic()
        for waiter in [w for w in line if w.ask.id in go]:
            self._line.remove(waiter)
            waiter.future.set_result(self._grant(waiter.ask, waiter.owner, now - waiter.since))

    def _forget(self, waiter: _Waiter) -> None:
        """A waiter gives up: out of the line, or its grant handed back (granted as it left)."""
        if waiter in self._line:
            self._line.remove(waiter)
            self._wake()  # those behind it may go now
        elif waiter.future.done() and not waiter.future.cancelled():
            self.release(waiter.future.result())
