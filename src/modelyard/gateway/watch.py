"""The client watch: a request's task is cancelled when its client disconnects.

Cancelling is what gives everything back: a queued request leaves the queue, a granted
one its slot, and closing the upstream request stops the generation. The watch covers a
request from its body's end to its answer's end, streams included (it is handed to the
stream, which stops it when done).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive

WATCH_AFTER = 0.05  # seconds into a request before its client's connection is watched


class ClientWatch:
    """Cancels ``task`` when the client behind ``receive`` disconnects.

    It starts ``WATCH_AFTER`` seconds in: most answers through a gateway come sooner, and
    for them it is one timer rather than a task reading from the connection.
    """

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.receive, self.task = receive, task
        self.fired = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.fired = True
        self.task.cancel()

    def swallow(self) -> bool:
        """Whether a CancelledError in ``task`` was this watch's doing and is now handled
        (``task`` is uncancelled): nobody is there to answer, the caller returns quietly."""
        return self.fired and self.task.uncancel() == 0

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
