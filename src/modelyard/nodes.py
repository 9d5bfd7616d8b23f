"""Nodes: the gateway drives its own machine in process and the others through their agents.

Both kinds offer the same interface to the scheduler: the node's mode, GPUs and memory
needs, start / stop / logs of its instances, and start / stop of the parts it holds of a
model across nodes (an rpc-server each, ``span.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

import aiohttp
import orjson

from modelyard import auto_gate
from modelyard.auto_gate import AutoGate
from modelyard.config import Config
from modelyard.engine_log import QUIET, LogItem, follow_lines, parse_sse
from modelyard.engines.base import Upstream
from modelyard.engines.catalog import engine_for
from modelyard.engines.llamacpp import LlamaCppEngine, LlamaCppModel
from modelyard.errors import AgentError, StartError
from modelyard.estimate import GgufFacts, need_for
from modelyard.gguf_file import read_facts
from modelyard.gpus import inventory, processes
from modelyard.lifecycle import NodeView
from modelyard.machine import Machine, MachineSampler
from modelyard.placement import Gpu, Need
from modelyard.rpc_part import Parts, RpcPart, part_key
from modelyard.store import Store
from modelyard.supervisor import Supervisor

auto_log = logging.getLogger("modelyard.auto_mode")


class NodeHandle(Protocol):
    """What the scheduler needs of a node, wherever it is."""

    name: str

    def view(self) -> NodeView: ...
    def gpus(self) -> list[Gpu]: ...
    def machine(self) -> Machine | None: ...
    def need(self, model: str) -> Need | None: ...
    async def start(
        self, model: str, timeout: float, parts: Parts | None = None
    ) -> tuple[Upstream, int | None]: ...
    async def stop(self, model: str, reason: str) -> None: ...
    async def start_part(self, model: str, timeout: float) -> str: ...
    async def stop_part(self, model: str, reason: str) -> None: ...
    def part_running(self, model: str) -> bool: ...
    async def logs(self, model: str, lines: int) -> list[str]: ...
    def follow_logs(self, model: str, lines: int) -> AsyncGenerator[LogItem, None]: ...
    async def set_mode(self, mode: str, stop_models: bool) -> None: ...
    async def refresh(self) -> None: ...
    async def close(self) -> None: ...


class LocalNode:
    """This machine: its supervisor, its GPUs (NVML or declared), its persisted mode."""

    def __init__(
        self,
        name: str,
        config: Config,
        store: Store,
        supervisor: Supervisor,
        engine_host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.config = config
        self.store = store
        self.supervisor = supervisor
        self.engine_host = engine_host
        node = config.nodes[name]
        saved = store.mode(name)
        self.mode = saved if saved in node.modes else node.initial_mode
        self._gpus: list[Gpu] = inventory(name, node) if isinstance(node.gpus, list) else []
        self._sampled = False
        self._machine_sampler = MachineSampler()  # this machine's CPU and memory
        self._machine = self._machine_sampler.sample()  # the CPU share's baseline
        self._facts: dict[str, GgufFacts | None] = {}  # read in refresh(), off the event loop
        # The auto mode: found in another mode than its first, the node is left as it is.
        self.gate = AutoGate(node.initial_mode, manual=self.mode != node.initial_mode)
        self._auto_change: tuple[str, str] | None = None  # (mode, why) due, from refresh()
        self.auto_holds: str | None = None  # why its auto mode's conditions hold now

    def models(self) -> list[str]:
        return [m for m in self.config.models if self.config.node_of(m) == self.name]

    def view(self) -> NodeView:
        kind = self.config.nodes[self.name].modes[self.mode].kind
        return NodeView(self.name, self.mode, kind, True)

    def gpus(self) -> list[Gpu]:
        return self._gpus

    def machine(self) -> Machine | None:
        return self._machine

    def need(self, model: str) -> Need | None:
        return need_for(self.config, model, self._gpus, self._facts.get(model))

    async def start(
        self, model: str, timeout: float, parts: Parts | None = None
    ) -> tuple[Upstream, int | None]:
        listen = self.config.nodes[self.name].engine_listen
        engine = engine_for(
            self.config.models[model], self.engine_host, self.config.engines, listen
        )
        if parts is not None and isinstance(engine, LlamaCppEngine):
            engine.rpc, engine.split = parts.rpc, parts.split
        return await self.supervisor.start(model, engine, timeout)

    async def stop(self, model: str, reason: str) -> None:
        await self.supervisor.stop(model, reason)

    async def start_part(self, model: str, timeout: float) -> str:
        """Start the rpc-server that holds this node's part of ``model``; its host:port."""
        spec = self.config.models[model]
        assert isinstance(spec, LlamaCppModel) and (self.name in spec.parts_on or spec.spans_auto)
        host = self.config.nodes[self.name].address or self.engine_host
        part = RpcPart(spec, host, self.config.engines, self.config.nodes[self.name].engine_listen)
        upstream, _ = await self.supervisor.start(part_key(model), part, timeout)
        return upstream.base_url

    async def stop_part(self, model: str, reason: str) -> None:
        await self.supervisor.stop(part_key(model), reason)

    def part_running(self, model: str) -> bool:
        proc = self.supervisor.processes.get(part_key(model))
        return proc is not None and proc.proc is not None and proc.proc.returncode is None

    async def logs(self, model: str, lines: int) -> list[str]:
        return self.supervisor.log(model).tail(lines)

    def follow_logs(self, model: str, lines: int) -> AsyncGenerator[LogItem, None]:
        """None once following, the last lines, then each new one (``follow_lines``): the
        model's log outlives its engine, so a restart's lines come to the same follower."""
        return follow_lines(self.supervisor.log(model), lines)

    def auto_due(self) -> str | None:
        """The mode its auto mode calls for now, if any; taken (it is said once), and its
        reason logged and kept as an event. Its owner applies it: the agent, or the
        gateway through its scheduler."""
        if self._auto_change is None:
            return None
        (mode, why), self._auto_change = self._auto_change, None
        auto_log.warning("node %s: mode %s (%s)", self.name, mode, why)
        self.store.event(f"node:{self.name}", "auto_mode", f"{mode}: {why}")
        return mode

    def auto_view(self) -> dict[str, Any] | None:
        """The auto mode's state, for /admin/nodes and the agent's status."""
        auto = self.config.nodes[self.name].auto_mode
        if auto is None:
            return None
        g = self.gate
        return {"mode": auto.mode, "entered": g.entered, "manual": g.manual,
                "reason": g.reason, "holds": self.auto_holds}  # fmt: skip

    async def set_mode(self, mode: str, stop_models: bool) -> None:
        modes = self.config.nodes[self.name].modes
        if mode not in modes:
            raise ValueError(
                f"node {self.name} has no mode {mode!r}; its modes: {', '.join(modes)}"
            )
        self.mode = mode
        self.store.set_mode(self.name, mode)
        self.store.event(f"node:{self.name}", "mode", mode)
        if stop_models:
            running = list(self.supervisor.processes)
            await asyncio.gather(*(self.stop(m, f"mode {mode}") for m in running))

    async def refresh(self) -> None:
        spec = self.config.nodes[self.name]
        if not self._sampled or spec.gpus == "auto" or spec.gpus_file is not None:
            self._gpus = await asyncio.to_thread(inventory, self.name, spec)
            self._sampled = True
        if spec.auto_mode is not None:
            ours = {p.pid for p in self.supervisor.processes.values() if p.pid is not None}
            reading = await asyncio.to_thread(
                lambda: auto_gate.read(spec.auto_mode, processes(self.name, spec), ours)  # type: ignore[arg-type]
            )
            self.auto_holds = auto_gate.why(spec.auto_mode, reading)
            change = self.gate.step(spec.auto_mode, self.mode, self.auto_holds, time.monotonic())
            if change is not None:  # until its owner applies it (a later round says None)
                self._auto_change = change
        self._facts = await asyncio.to_thread(self._read_facts)
        self._machine = self._machine_sampler.sample()  # three small /proc reads: inline

    def _read_facts(self) -> dict[str, GgufFacts | None]:
        facts: dict[str, GgufFacts | None] = {}
        for model in self.models():
            gguf = self.config.models[model].gguf
            if gguf is not None:
                try:
                    facts[model] = read_facts(gguf)  # cached while the file is unchanged
                except (OSError, ValueError):
                    facts[model] = None  # a missing file fails at start, with its own message
        return facts

    async def close(self) -> None:
        await self.supervisor.close()


class RemoteNode:
    """A machine driven through its agent over HTTP; ``refresh`` polls its status."""

    def __init__(
        self,
        name: str,
        config: Config,
        on_exit: Callable[[str, str], None],
        on_gone: Callable[[str, str], None],
    ) -> None:
        self.name = name
        self.config = config
        node = config.nodes[name]
        assert node.url is not None
        self.url = node.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {node.token}"} if node.token else {}
        self._session: aiohttp.ClientSession | None = None  # made in the event loop, on first use
        self.on_exit = on_exit  # (model, why): an engine there exited by itself
        self.on_gone = on_gone  # (model, why): an engine there stopped without us
        self.reachable = False
        self.error: str | None = "not contacted yet"
        self.mode = node.initial_mode
        self._gpus: list[Gpu] = []
        self._machine: Machine | None = None  # its CPU and memory, as its agent reports
        self._needs: dict[str, Need] = {}
        self._instances: dict[str, dict[str, Any]] = {}
        self._parts: dict[str, bool] = {}  # model → its part here runs (agent's status)
        self.auto: dict[str, Any] | None = None  # the agent's auto mode state
        self.last_seen: float | None = None
        self.relays = 0  # engine log streams relayed from the agent now (follow_logs)

    def view(self) -> NodeView:
        modes = self.config.nodes[self.name].modes
        kind = modes[self.mode].kind if self.mode in modes else "open"
        return NodeView(self.name, self.mode, kind, self.reachable)

    def gpus(self) -> list[Gpu]:
        return self._gpus

    def machine(self) -> Machine | None:
        return self._machine

    def need(self, model: str) -> Need | None:
        return self._needs.get(model)

    async def _call(self, method: str, path: str, timeout: float = 10, **kw: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(
                method,
                self.url + path,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                **kw,
            ) as resp:
                return await _answer(resp, self.name)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._lost(f"{type(exc).__name__}: {exc}")
            raise AgentError(503, f"node {self.name} is unreachable ({self.url}): {exc}") from exc

    def _lost(self, why: str) -> None:
        self.reachable, self.error = False, why
        self._machine = None  # no stale readings for a machine that does not answer

    async def start(
        self, model: str, timeout: float, parts: Parts | None = None
    ) -> tuple[Upstream, int | None]:
        asked: dict[str, Any] = {"timeout": timeout}
        if parts is not None:
            asked |= {"rpc": list(parts.rpc), "split": list(parts.split)}
        try:
            body = await self._call(
                "POST", f"/agent/instances/{model}/start", timeout=timeout + 30, json=asked
            )
        except AgentError as exc:
            raise StartError(exc.message) from exc
        up = body["upstream"]
        self._instances[model] = {"running": True, "exits": body.get("exits", 0)}
        return Upstream(up["base_url"], up.get("model"), up.get("headers") or {}), body.get("pid")

    async def stop(self, model: str, reason: str) -> None:
        try:
            await self._call(
                "POST", f"/agent/instances/{model}/stop", timeout=120, json={"reason": reason}
            )
        except AgentError:
            pass  # unreachable: its engines die with it (they run under the agent)
        self._instances.pop(model, None)

    async def start_part(self, model: str, timeout: float) -> str:
        try:
            body = await self._call(
                "POST",
                f"/agent/parts/{model}/start",
                timeout=timeout + 30,
                json={"timeout": timeout},
            )
        except AgentError as exc:
            raise StartError(f"its part on node {self.name}: {exc.message}") from exc
        self._parts[model] = True
        return str(body["address"])

    async def stop_part(self, model: str, reason: str) -> None:
        with contextlib.suppress(AgentError):  # unreachable: it dies with the agent
            await self._call(
                "POST", f"/agent/parts/{model}/stop", timeout=60, json={"reason": reason}
            )
        self._parts.pop(model, None)

    def part_running(self, model: str) -> bool:
        return self.reachable and self._parts.get(model, False)

    async def logs(self, model: str, lines: int) -> list[str]:
        body = await self._call("GET", f"/agent/instances/{model}/logs?lines={lines}")
        return list(body["lines"])

    async def follow_logs(self, model: str, lines: int) -> AsyncGenerator[LogItem, None]:
        """The agent's ``logs?follow=1`` stream, relayed: raises AgentError on the first
        ``anext`` if it cannot be had; ends when the agent's stream does; closing it (the
        client left) closes the connection to the agent, which lets go of its follower."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{self.url}/agent/instances/{model}/logs?follow=1&lines={lines}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=QUIET * 3)
        try:
            resp = await self._session.get(url, headers=self.headers, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AgentError(503, f"node {self.name} is unreachable ({self.url}): {exc}") from exc
        self.relays += 1
        try:
            if resp.status >= 400:
                await _answer(resp, self.name)  # raises its error
            async for item in parse_sse(resp.content.iter_any()):
                yield item
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # the agent went, or broke the stream: it ends here (a browser reconnects)
        finally:
            self.relays -= 1
            resp.close()

    async def set_mode(self, mode: str, stop_models: bool) -> None:
        await self._call(
            "PUT", "/agent/mode", json={"mode": mode, "stop_models": stop_models}, timeout=120
        )
        self.mode = mode

    async def refresh(self) -> None:
        try:
            status = await self._call("GET", "/agent/status", timeout=5)
        except AgentError as exc:
            self._lost(exc.message)  # a wrong token too: nothing can be done there
            return
        self.reachable, self.error, self.last_seen = True, None, time.time()
        self.mode = status["mode"]
        self.auto = status.get("auto_mode")
        self._machine = Machine.from_dict(status.get("machine"))
        self._gpus = [
            Gpu(
                self.name,
                g["index"],
                g["name"],
                g["memory_total"],
                g["memory_used"],
                g.get("pcie_gen"),
                g.get("pcie_width"),
                g.get("utilization"),
                g.get("temperature"),
                g.get("power"),
                bool(g.get("measured")),
            )
            for g in status["gpus"]
        ]
        self._needs = {
            m: Need(self.name, {int(k): v for k, v in n["per_gpu"].items()}, n["moe"], n["how"])
            for m, n in status["needs"].items()
        }
        for model in self._parts:
            self._parts[model] = bool(status.get("parts", {}).get(model, {}).get("running"))
        for model, before in list(self._instances.items()):
            now = status["instances"].get(model, {"running": False, "exits": 0})
            if now["running"]:
                continue
            del self._instances[model]
            if now["exits"] > before.get("exits", 0):
                self.on_exit(model, now.get("last_exit") or "exited")
            else:
                self.on_gone(model, f"no longer running on node {self.name}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _answer(resp: aiohttp.ClientResponse, node: str) -> Any:
    """An agent's JSON answer; AgentError for an error status, or for an answer that is not
    JSON (a crash's plain-text 500, a proxy's page): the agent answered, so the node is not
    lost for it, and the error quotes what came."""
    raw = await resp.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        said = raw[:200].decode("utf-8", "replace").strip()
        status = resp.status if resp.status >= 400 else 502
        raise AgentError(
            status, f"node {node}'s agent answered HTTP {resp.status}, not JSON: {said!r}"
        ) from None
    if resp.status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise AgentError(resp.status, str(message or body))
    return body
