"""The event hub: every state change of the yard, published once, read by whoever listens.

Kinds: ``instance`` (a model's instance starting, ready, draining, stopped, failed,
crashed, a leak handed back), ``node`` (a node's mode or reachability changed), ``config``
(a reload applied), ``request`` (a request finished: its row in the request log) and
``sample`` (every 2 s, each node's CPU, memory and GPU readings; published only while
someone subscribes to it, and never stored).

Two ways to listen:

- a *listener* is called inline for each event of its kinds (the store, which must not
  miss one); it must be quick and never await;
- a *subscription* is a bounded buffer read at its own pace (``GET /admin/events``,
  ``modelyard top``, the console). One that falls behind loses its oldest events and is
  told how many (a ``lost`` event); it never slows the gateway or holds more than its
  buffer. A closed subscription is dropped from the hub.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.mailbox import Dropped, Mailbox

KINDS = ("instance", "node", "config", "request", "sample")
LOST = "lost"  # not published: what a subscription says when it dropped events
BUFFER = 1000  # events a subscription keeps unread before it drops the oldest


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``seq`` orders them (it never repeats within a gateway's run)."""

    seq: int
    at: float  # wall clock, seconds since the epoch
    kind: str
    data: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": round(self.at, 3), "kind": self.kind, **self.data}


Listener = Callable[[Event], None]


class Subscription(Mailbox[Event]):
    """A bounded buffer of events of ``kinds`` (None: all), read with ``next``."""

    def __init__(self, hub: Hub, kinds: Collection[str] | None, size: int) -> None:
        super().__init__(size)
        self.kinds = frozenset(kinds) if kinds is not None else None
        self._hub = hub

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, a ``lost`` event if some were dropped since the last read, or
        None after ``timeout`` seconds with nothing new."""
        got = await self.get(timeout)
        if isinstance(got, Dropped):
            return Event(-1, time.time(), LOST, {"lost": got.count})
        return got

    def close(self) -> None:
        self._hub.unsubscribe(self)


class Hub:
    """Where events are published; see the module's docstring."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._listeners: list[tuple[frozenset[str] | None, Listener]] = []
        self._subs: list[Subscription] = []
        self._wanted: frozenset[str] = frozenset()  # kinds someone listens to (per request)

    def publish(self, kind: str, **data: Any) -> Event:
        event = Event(next(self._seq), time.time(), kind, data)
        for kinds, listener in self._listeners:
            if kinds is None or kind in kinds:
                listener(event)
        for sub in self._subs:
            if sub.kinds is None or kind in sub.kinds:
                sub.put(event)
        return event

    def wants(self, kind: str) -> bool:
        """Whether anyone listens to ``kind`` (skip building an event nobody reads)."""
        return kind in self._wanted

    def listen(self, listener: Listener, kinds: Collection[str] | None = None) -> None:
        self._listeners.append((frozenset(kinds) if kinds is not None else None, listener))
        self._count()

    def subscribe(self, kinds: Collection[str] | None = None, size: int = BUFFER) -> Subscription:
        sub = Subscription(self, kinds, size)
        self._subs.append(sub)
        self._count()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._count()

    def _count(self) -> None:
        kinds = [k for k, _ in self._listeners] + [s.kinds for s in self._subs]
        every = any(k is None for k in kinds)
        self._wanted = frozenset(KINDS) if every else frozenset().union(*(k for k in kinds if k))

    @property
    def subscribers(self) -> int:
        return len(self._subs)
