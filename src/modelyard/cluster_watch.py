"""What the gateway knows of its cluster, kept fresh.

Every ``POLL_SECONDS``: each node refreshes (an agent's reachability, mode, GPUs and
exits; this machine's GPUs and GGUF facts), each model served from a URL that may go down
is probed by its engine, a ``node`` event goes out for each node whose mode or
reachability changed, a ``sample`` event with every node's CPU, memory and GPU readings
(only while someone subscribes to them), a model across nodes whose part is gone fails
(``span.watch``), preload models whose node came up start (``preload.py``), and the
scheduler is poked (placement may have changed) and audits its slots. ``cluster()`` is what
routing reads of all that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from modelyard import span
from modelyard.balance import Load
from modelyard.config import Config
from modelyard.engines.base import Http
from modelyard.engines.catalog import ENGINES, engine_for
from modelyard.events import Hub
from modelyard.instance import slots_of, unavailable
from modelyard.lifecycle import NodeView, State
from modelyard.machine import Machine
from modelyard.nodes import LocalNode, NodeHandle
from modelyard.preload import Preloader
from modelyard.routing import Cluster
from modelyard.scheduler import Scheduler

POLL_SECONDS = 2.0  # how often agents are asked for their status and GPUs are sampled


class Claim:
    """A routed request's count on the member it goes to first, until the scheduler counts
    it; ``release`` may be called any number of times (once counts)."""

    def __init__(self, pending: dict[str, int] | None, model: str) -> None:
        self._pending, self._model = pending, model

    def release(self) -> None:
        if self._pending is None:
            return
        left = self._pending.get(self._model, 0) - 1
        if left > 0:
            self._pending[self._model] = left
        else:
            self._pending.pop(self._model, None)
        self._pending = None


NO_CLAIM = Claim(None, "")


class ClusterWatch:
    """Polls the nodes and URL-served models; publishes node changes."""

    def __init__(
        self,
        config: Callable[[], Config],
        nodes: Mapping[str, NodeHandle],
        scheduler: Scheduler,
        events: Hub,
    ) -> None:
        self._config = config  # the gateway's, read anew each round: reloads change it
        self.nodes = nodes
        self.scheduler = scheduler
        self.events = events
        self.down: dict[str, str] = {}  # model served from a URL → why it does not answer
        self.turns: dict[str, int] = {}  # round_robin tier → requests routed to it so far
        # least_busy members: requests routed to them that the scheduler does not count yet
        # (a stream asks for its place a loop turn after its decision)
        self.pending: dict[str, int] = {}
        self.preloader = Preloader(scheduler)
        self._http: Http | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self, http: Http) -> None:
        """One round now, without publishing: the gateway's state before it serves."""
        self._http = http
        await asyncio.gather(*(node.refresh() for node in self.nodes.values()), self._probe())

    def start(self) -> None:
        self.preloader.round(self._config(), self.views())  # what comes up with the gateway
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.preloader.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            before = self.node_views()
            await asyncio.gather(*(node.refresh() for node in self.nodes.values()), self._probe())
            await span.watch(self.nodes, self._config(), self.scheduler)
            await self._auto_modes()
            self.preloader.round(self._config(), self.views())
            self.publish_nodes(before)
            self.publish_sample()
            self.scheduler.poke()
            self.scheduler.audit()
            self.scheduler.gpu_leases.audit(time.monotonic())

    async def _probe(self) -> None:
        """Is each URL-served model's URL answering? Routing skips the ones that are not."""
        if self._http is None:
            return
        probed = [m for m in self._config().models.values() if ENGINES[m.engine].probes_url]
        found = await asyncio.gather(*(engine_for(m).down(self._http) for m in probed))
        self.down = {m.name: why for m, why in zip(probed, found, strict=True) if why}

    async def _auto_modes(self) -> None:
        """The gateway's own node entering or leaving its auto mode (an agent does that for
        its node itself): through the scheduler, which drains as a person's change would."""
        for name, node in self.nodes.items():
            mode = node.auto_due() if isinstance(node, LocalNode) else None
            if mode is not None:
                await self.scheduler.set_mode(name, mode)

    def views(self) -> dict[str, NodeView]:
        return {name: node.view() for name, node in self.nodes.items()}

    def node_views(self) -> dict[str, tuple[str, bool]]:
        """Each node's mode and reachability now."""
        return {n: (v.mode, v.reachable) for n, node in self.nodes.items() for v in [node.view()]}

    def publish_nodes(self, before: dict[str, tuple[str, bool]]) -> None:
        """A ``node`` event for each node whose mode or reachability is not as ``before``."""
        for name, (mode, reachable) in self.node_views().items():
            if before.get(name) != (mode, reachable):
                self.events.publish("node", node=name, mode=mode, reachable=reachable)

    def publish_sample(self) -> None:
        """A ``sample`` event: each node's machine and GPU readings of this round; built only
        when someone listens (the console's Nodes page), and never stored."""
        if self.events.wants("sample"):
            self.events.publish("sample", nodes=[sample_of(n) for n in self.nodes.values()])

    def cluster(self) -> Cluster:
        """What routing reads of the cluster now."""
        views = {name: node.view() for name, node in self.nodes.items()}
        return Cluster(
            modes={n: (v.mode, v.kind) for n, v in views.items()},
            reachable={n: v.reachable for n, v in views.items()},
            failed=unavailable(self.scheduler.instances.values(), time.monotonic()),
            remote_down=dict(self.down),
            loads=_Loads(self, self._config()),  # read only for a least_busy tier's members
            turns=self.turns,  # read, not kept: routing is done before anything changes it
        )

    def routed(self, tier: str | None, first: str | None) -> Claim:
        """A request was routed to ``tier``, to be tried first on ``first``: a round_robin
        tier's turn moves on; for a least_busy tier, the request counts on ``first`` until
        the scheduler counts it (``Claim.release``: it asks for a place, or never will)."""
        if tier is None:
            return NO_CLAIM
        how = self._config().tier_picks.get(tier)
        if how == "round_robin":
            self.turns[tier] = self.turns.get(tier, 0) + 1
        if how != "least_busy" or first is None:
            return NO_CLAIM
        self.pending[first] = self.pending.get(first, 0) + 1
        return Claim(self.pending, first)

    def load(self, config: Config, model: str, queued: int) -> Load:
        """``model``'s live load: its instance's slots in use, its queue, its GPUs' use."""
        inst = self.scheduler.instances.get(model)
        spec = config.models[model]
        node = self.nodes.get(config.node_of(model))
        used: list[int] = []
        if node is not None and spec.gpus != []:
            need = node.need(model)
            mine = set(spec.gpus) if spec.gpus else set(need.per_gpu) if need else set()
            used = [
                g.utilization for g in node.gpus() if g.index in mine and g.utilization is not None
            ]
        return Load(
            ready=inst is not None and inst.state is State.READY,
            in_use=inst.in_flight if inst is not None else 0,
            slots=slots_of(spec) or 1,
            queued=queued,
            gpu=max(used) if used else None,
        )


def sample_of(node: NodeHandle) -> dict[str, Any]:
    """One node's readings for a ``sample`` event (memory in bytes, power in watts)."""
    machine = node.machine() or Machine()
    gpus = [
        {"index": g.index, "memory_used": g.used, "memory_total": g.total,
         "utilization": g.utilization, "temperature": g.temperature, "power": g.power}
        for g in node.gpus()
    ]  # fmt: skip
    return {"name": node.name, "reachable": node.view().reachable,
            "machine": machine.as_dict(), "gpus": gpus}  # fmt: skip


class _Loads(Mapping[str, Load]):
    """The live load of each model, read when routing asks for one: only a least_busy
    tier's members are asked for, so other requests pay nothing for it."""

    def __init__(self, watch: ClusterWatch, config: Config) -> None:
        self._watch, self._config = watch, config
        self._queued: dict[str, int] | None = None
        self._read: dict[str, Load] = {}  # one reading per model per decision

    def __getitem__(self, model: str) -> Load:
        if model not in self._config.models:
            raise KeyError(model)
        if model not in self._read:
            if self._queued is None:
                self._queued = self._watch.scheduler.waiting()
            waiting = self._queued.get(model, 0) + self._watch.pending.get(model, 0)
            self._read[model] = self._watch.load(self._config, model, waiting)
        return self._read[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._config.models)

    def __len__(self) -> int:
        return len(self._config.models)
