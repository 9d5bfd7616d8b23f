"""A mailbox: a bounded buffer between a writer that never waits and a reader at its own pace.

What the event hub's subscriptions and an engine log's followers are made of. Putting an
item never blocks: a reader more than ``size`` items behind loses the oldest and is told
how many (``Dropped``) before its next item, so a slow or absent reader costs at most its
buffer and never slows the writer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Dropped:
    """``count`` items were dropped (the reader fell behind) before the next one."""

    count: int


class Mailbox(Generic[T]):
    """Items put by a writer, read with ``get``; at most ``size`` kept unread."""

    def __init__(self, size: int) -> None:
        self.lost = 0  # dropped since the last read
        self.ended = False  # no more items will come
        self._items: deque[T] = deque(maxlen=size)
        self._ready = asyncio.Event()

    @property
    def held(self) -> int:
        """Items put and not read yet (at most ``size``)."""
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) == self._items.maxlen:
            self.lost += 1  # the oldest goes: never more than the buffer, never a wait
        self._items.append(item)
        self._ready.set()

    def end(self) -> None:
        """No more items: a waiting reader wakes, and ``get`` answers at once from now on."""
        self.ended = True
        self._ready.set()

    async def get(self, timeout: float | None = None) -> T | Dropped | None:
        """The next item, ``Dropped`` if items were dropped since the last read, or None
        after ``timeout`` seconds with nothing new (at once once ended and empty)."""
        while not self._items and not self.lost and not self.ended:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        if self.lost:
            lost, self.lost = self.lost, 0
            return Dropped(lost)
        return self._items.popleft() if self._items else None
