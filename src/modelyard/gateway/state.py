"""What the gateway's handlers share: config, scheduler, store and the upstream client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from modelyard.config import Config, RemoteModel
from modelyard.engines import StartError
from modelyard.engines.remote import RemoteEngine
from modelyard.events import Hub
from modelyard.gateway.proxy import UpstreamClient, new_client
from modelyard.nodes import LocalNode, NodeHandle, RemoteNode
from modelyard.routing import Cluster, header_names
from modelyard.scheduler import Scheduler
from modelyard.store import Store
from modelyard.supervisor import Supervisor, describe_exit
from modelyard.telemetry import NodeReading, Telemetry
from modelyard.views import status_view

POLL_SECONDS = 2.0  # how often agents are asked for their status and GPUs are sampled


class ReloadRefused(Exception):
    """A new config that cannot be applied to a running gateway."""


class Gateway:
    """The running gateway of one node."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.state_dir / "modelyard.db")
        self.supervisor = Supervisor(
            config.state_dir / "logs", self._on_exit, config.scheduler.stop_grace, self.store
        )
        self.client: UpstreamClient = None  # type: ignore[assignment]  # set in open()
        self.nodes: dict[str, NodeHandle] = {}
        self.events = Hub()
        self.events.listen(self.store.on_event, ("instance", "config"))
        self.scheduler = Scheduler(config, self.nodes, self.store, self.events)
        for name, spec in config.nodes.items():
            if spec.url is None:
                self.nodes[name] = LocalNode(name, config, self.store, self.supervisor)
            else:
                self.nodes[name] = RemoteNode(
                    name, config, self.scheduler.on_exit, self.scheduler.on_gone
                )
        self.remote_down: dict[str, str] = {}  # remote model → why its URL is not answering
        self.started = time.time()
        self._poller: asyncio.Task[None] | None = None
        self._rule_names = frozenset(r.name for r in config.policy)
        self.routing_headers = header_names(config)  # all a decision keeps of the headers
        self.telemetry = Telemetry(
            lambda: self.scheduler,
            self._node_readings,
            lambda: self.config.models,
            lambda: self._rule_names,
        )

    def _node_readings(self) -> list[NodeReading]:
        return [
            NodeReading(name, view.reachable, view.mode, node.gpus())
            for name, node in self.nodes.items()
            for view in [node.view()]
        ]

    def _on_exit(self, model: str, code: int) -> None:
        tail = self.supervisor.log(model).tail(15)
        why = StartError(f"engine exited unexpectedly with {describe_exit(code)}", tail)
        self.scheduler.on_exit(model, str(why))

    async def open(self) -> None:
        # First what a killed predecessor left running: it may hold the GPU memory and the
        # ports our engines are about to need.
        await self.supervisor.reap()
        self.client = new_client()
        keep = self.config.telemetry
        self.store.start_flusher(
            keep_requests=keep.keep_requests, keep_decisions=keep.keep_decisions
        )
        await asyncio.gather(
            *(node.refresh() for node in self.nodes.values()), self._probe_remotes()
        )
        self.scheduler.start_loop()
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        """Agents' status (reachability, mode, GPUs, exits), local GPUs, remote URLs."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            before = self.node_views()
            await asyncio.gather(
                *(node.refresh() for node in self.nodes.values()), self._probe_remotes()
            )
            self.publish_nodes(before)
            self.scheduler.poke()
            self.scheduler.audit()

    async def _probe_remotes(self) -> None:
        """Is each `remote` model's URL answering? Routing skips the ones that are not."""
        remotes = {n: m for n, m in self.config.models.items() if isinstance(m, RemoteModel)}
        found = await asyncio.gather(
            *(RemoteEngine(m).down(self.client.pooled) for m in remotes.values())
        )
        self.remote_down = {n: why for n, why in zip(remotes, found, strict=True) if why}

    def node_views(self) -> dict[str, tuple[str, bool]]:
        """Each node's mode and reachability now."""
        return {n: (v.mode, v.reachable) for n, node in self.nodes.items() for v in [node.view()]}

    def publish_nodes(self, before: dict[str, tuple[str, bool]]) -> None:
        """A ``node`` event for each node whose mode or reachability is not as ``before``."""
        for name, (mode, reachable) in self.node_views().items():
            if before.get(name) != (mode, reachable):
                self.events.publish("node", node=name, mode=mode, reachable=reachable)

    def cluster(self) -> Cluster:
        """What routing reads of the cluster now."""
        views = {name: node.view() for name, node in self.nodes.items()}
        return Cluster(
            modes={n: (v.mode, v.kind) for n, v in views.items()},
            reachable={n: v.reachable for n, v in views.items()},
            failed=self.scheduler.unavailable(),
            remote_down=dict(self.remote_down),
        )

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.scheduler.close()
        await self.client.close()
        await self.store.close()

    async def reload(self, new: Config) -> dict[str, Any]:
        """Apply a validated config: running answers go on; changed and removed models stop
        (after their requests finish) and come back with their new settings on demand."""
        fixed = [
            k
            for k in ("listen", "state_dir", "nodes", "access", "telemetry")
            if getattr(new, k) != getattr(self.config, k)
        ]
        if fixed:
            raise ReloadRefused(f"{', '.join(fixed)} changed: restart the gateway to apply that")
        old = self.config
        removed = [m for m in old.models if m not in new.models]
        changed = [m for m in old.models if m in new.models and old.models[m] != new.models[m]]
        # All at once, no await between: routing, the nodes and the scheduler take the new
        # config together, so nothing starts on the old settings after this point.
        generation = {m: i.generation for m, i in self.scheduler.instances.items()}
        self.config = new
        self._rule_names = frozenset(r.name for r in new.policy)
        self.routing_headers = header_names(new)
        for node in self.nodes.values():
            node.config = new  # type: ignore[attr-defined]
        self.scheduler.apply_config(new, changed, removed)
        added = [m for m in new.models if m not in old.models]
        self.events.publish("config", added=added, changed=changed, removed=removed)
        await self.scheduler.retired(removed + changed, generation)
        return {"added": added, "changed": changed, "removed": removed}

    def known_names(self) -> list[str]:
        names = list(self.config.models)
        for model in self.config.models.values():
            names += model.aliases
        return names

    def wait_timeout(self, model: str) -> float:
        """How long a request may wait for its model: a swap away, then a cold start."""
        s = self.config.scheduler
        start = self.config.models[model].start_timeout or s.start_timeout
        return s.max_swap_delay + s.drain_timeout + s.stop_grace + start

    def status(self) -> dict[str, Any]:
        return status_view(
            self.scheduler,
            self.nodes,
            self.started,
            self.events.subscribers,
            self.store.events(limit=20),
        )
