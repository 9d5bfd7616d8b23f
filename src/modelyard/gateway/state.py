"""What the gateway's handlers share: config, scheduler, store and the upstream client."""

from __future__ import annotations

import time
from typing import Any

from modelyard import span
from modelyard.cluster_watch import ClusterWatch
from modelyard.config import Config
from modelyard.conversations import Conversations
from modelyard.engine_calls import SessionHttp
from modelyard.errors import ReloadRefused, StartError
from modelyard.events import Hub
from modelyard.gateway.inner import InnerClient
from modelyard.gateway.proxy import UpstreamClient, new_client
from modelyard.gateway.session import SessionStore
from modelyard.nodes import LocalNode, NodeHandle, RemoteNode
from modelyard.routing import header_names
from modelyard.scheduler import Scheduler
from modelyard.store import Store
from modelyard.supervisor import Supervisor, describe_exit
from modelyard.telemetry import NodeReading, Telemetry
from modelyard.views import status_view


class Gateway:
    """The running gateway of one node."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.state_dir / "modelyard.db")
        self.sessions = SessionStore(config.state_dir / "sessions.db")  # the console's
        self.conversations = Conversations(  # the console's chat history, opened in open()
            config.state_dir / "conversations.db", config.access.max_body
        )
        local = config.nodes.get(config.local_node or "")
        self.supervisor = Supervisor(
            config.state_dir / "logs", self._on_exit, config.scheduler.stop_grace, self.store,
            local.ports if local is not None else None,
        )  # fmt: skip
        self.client: UpstreamClient = None  # type: ignore[assignment]  # set in open()
        self.inner: InnerClient = None  # type: ignore[assignment]  # set by create_app
        self.wyoming: Any = None  # a WyomingListener, when the config has `wyoming:`
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
        self.watch = ClusterWatch(lambda: self.config, self.nodes, self.scheduler, self.events)
        self.started = time.time()
        self._rule_names = frozenset(r.name for r in config.policy)
        self.routing_headers = header_names(config)  # all a decision keeps of the headers
        self.telemetry = Telemetry(
            lambda: self.scheduler,
            self._node_readings,
            lambda: self.config.models,
            lambda: self._rule_names,
            self._gpus_of,
        )
        self.scheduler.gpu_leases.on_wait = self.telemetry.observe_lease_wait

    def _gpus_of(self, model: str, node: str) -> list[int]:
        """The GPUs ``model`` uses on ``node``: its ``gpus``, else its placement's, else all."""
        spec = self.config.models.get(model)
        handle = self.nodes.get(node)
        if spec is None or handle is None or spec.gpus == []:
            return []
        if spec.gpus:
            return list(spec.gpus)
        need = handle.need(model)
        return sorted(need.per_gpu) if need and need.per_gpu else [g.index for g in handle.gpus()]

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
        await self.conversations.open()
        keep = self.config.telemetry
        self.store.start_flusher(
            keep_requests=keep.keep_requests, keep_decisions=keep.keep_decisions
        )
        await self.watch.refresh(SessionHttp(self.client.pooled))
        self.scheduler.start_loop()
        self.watch.start()
        if self.config.wyoming is not None:
            # Imported here: the ``wyoming`` package comes with the speech extra.
            from modelyard.gateway.wyoming import WyomingListener

            listener = WyomingListener(self, self.config.wyoming)
            try:
                await listener.start()
            except BaseException:
                await self.close()  # what open() started so far, then the error
                raise
            self.wyoming = listener

    async def close(self) -> None:
        if self.wyoming is not None:
            await self.wyoming.close()
        await self.watch.close()
        await span.close(self.scheduler.nodes, self.config, self.scheduler.parts)
        await self.scheduler.close()
        await self.client.close()
        await self.store.close()
        await self.conversations.close()
        self.sessions.close()

    async def reload(self, new: Config) -> dict[str, Any]:
        """Apply a validated config: running answers go on; changed and removed models stop
        (after their requests finish) and come back with their new settings on demand."""
        fixed = [
            k
            for k in ("listen", "state_dir", "nodes", "access", "telemetry", "wyoming")
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

    def status(self) -> dict[str, Any]:
        view = status_view(
            self.scheduler,
            self.nodes,
            self.started,
            self.events.subscribers,
            self.store.events(limit=20),
        )
        return {**view, "speeds": self.telemetry.speeds()}
