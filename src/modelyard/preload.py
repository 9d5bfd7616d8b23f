"""Warm by default: models marked ``preload`` start when their node comes up (the gateway's
first round, an agent that answers again) and when their node leaves a mode that stopped
them, without waiting for a request.

Each round of the cluster watch (``Preloader.round``) notes those moments per node and
starts what they call for in the background: the gateway's start never waits for it. A
failed start is tried again after the scheduler's backoff (``scheduler.restart_backoff``,
doubling up to ``restart_backoff_max``), ``max_restarts`` times; its failure is the
instance's, shown like any other. Only these moments start a model: one stopped later (by
a person, by its ``ttl``) stays stopped until the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from modelyard.config import Config
from modelyard.errors import Refused
from modelyard.lifecycle import RESIDENT, NodeView, State

if TYPE_CHECKING:
    from modelyard.scheduler import Scheduler


def nodes_of(config: Config, model: str) -> tuple[str, ...]:
    """Its node, and the nodes that hold its parts."""
    return (config.node_of(model), *config.models[model].parts_on)


class Preloader:
    """Which preload models are wanted up now, and their start attempts."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._seen: dict[str, tuple[bool, str]] | None = None  # node → (reachable, kind)
        self.wanted: dict[str, float] = {}  # model → when it may be tried (monotonic)
        self._tries: dict[str, int] = {}  # model → failed starts in a row
        self._running: dict[str, asyncio.Task[None]] = {}

    def round(self, config: Config, views: Mapping[str, NodeView]) -> None:
        """Note the nodes that came up or opened since the last round; start what is due."""
        now = time.monotonic()
        seen = {n: (v.reachable, v.kind) for n, v in views.items()}
        came_up = {
            n
            for n, (up, kind) in seen.items()
            if up and kind == "open" and (self._seen is None or self._seen.get(n) != (up, kind))
        }
        self._seen = seen
        for name, spec in config.models.items():
            if spec.preload and came_up & set(nodes_of(config, name)):
                self.wanted.setdefault(name, now)
                self._tries.pop(name, None)
        for name, due in list(self.wanted.items()):
            if name not in config.models or name in self._running or due > now:
                continue
            if not all(seen.get(n) == (True, "open") for n in nodes_of(config, name)):
                continue  # its node went again: the next time it comes up says
            inst = self.scheduler.instances.get(name)
            if inst is not None and inst.state is State.READY:
                del self.wanted[name]
                continue
            if inst is None or inst.state in RESIDENT:
                continue  # starting already (a request came first)
            self._running[name] = asyncio.create_task(self._start(config, name))

    async def _start(self, config: Config, name: str) -> None:
        try:
            await self.scheduler.start(name, timeout=config.wait_limit(name))
        except Refused as exc:
            tries = self._tries.get(name, 0) + 1
            self._tries[name] = tries
            timing = config.scheduler
            if tries >= timing.max_restarts:
                self.wanted.pop(name, None)
                self._said(name, f"preload gave up after {tries} tries: {exc.reason}")
            else:
                wait = min(timing.restart_backoff * 2 ** (tries - 1), timing.restart_backoff_max)
                self.wanted[name] = time.monotonic() + wait
                self._said(name, f"preload failed, tried again in {wait:g}s: {exc.reason}")
        else:
            self.wanted.pop(name, None)
            self._tries.pop(name, None)
            self._said(name, "preloaded")
        finally:
            self._running.pop(name, None)

    def _said(self, name: str, detail: str) -> None:
        """An instance event (the store keeps it; /admin/status and top show it)."""
        inst = self.scheduler.instances.get(name)
        if inst is not None:
            self.scheduler.said(inst, "preload", detail)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
