"""The agent: the HTTP face of one node (its GPUs, its mode, the supervisor of its instances).

``modelyard agent -c FILE --node NAME`` runs it on that machine. Every route but ``/health``
requires the node's token (``Authorization: Bearer TOKEN``); a wrong one gets 401 and
nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelyard import __version__
from modelyard.cluster_watch import POLL_SECONDS
from modelyard.config import Config
from modelyard.engine_log import LINES_WANTED, SSE_HEADERS, log_query, sse_stream
from modelyard.errors import Code, StartError
from modelyard.gateway.errors import error_response
from modelyard.nodes import LocalNode
from modelyard.rpc_part import Parts, part_key
from modelyard.store import Store
from modelyard.supervisor import Supervisor, describe_exit
from modelyard.views import gpu_view, need_view, node_view


class Agent:
    """One node's supervisor, GPUs and mode, and what became of its engines."""

    def __init__(self, config: Config, node: str) -> None:
        spec = config.nodes[node]
        state = config.agent_state_dir(node)
        self.store = Store(state / "modelyard.db")
        self.supervisor = Supervisor(
            state / "logs", self._exited, config.scheduler.stop_grace, self.store, spec.ports
        )
        host = urlsplit(spec.url).hostname if spec.url else None
        self.node = LocalNode(node, config, self.store, self.supervisor, host or "127.0.0.1")
        self.token = spec.token
        self.exits: dict[str, int] = {}
        self.last_exit: dict[str, str] = {}

    def _exited(self, model: str, code: int) -> None:
        self.exits[model] = self.exits.get(model, 0) + 1
        self.last_exit[model] = f"engine exited unexpectedly with {describe_exit(code)}"
        self.store.event(model, "crashed", self.last_exit[model])

    def status(self) -> dict[str, Any]:
        node = self.node
        needs = {m: node.need(m) for m in node.models()}
        return {
            **node_view(node, node.config),
            "gpus": [gpu_view(g) for g in node.gpus()],
            "needs": {m: need_view(n) for m, n in needs.items() if n is not None},
            "auto_mode": node.auto_view(),
            "time": time.time(),  # its clock, for doctor's skew check (finer than Date)
            "parts": {
                m: {"running": node.part_running(m), "exits": self.exits.get(part_key(m), 0)}
                for m in self.parts()
            },
            "instances": {
                m: {
                    "running": m in self.supervisor.processes,
                    "pid": self.supervisor.processes[m].pid
                    if m in self.supervisor.processes
                    else None,
                    "exits": self.exits.get(m, 0),
                    "last_exit": self.last_exit.get(m),
                }
                for m in node.models()
            },
        }

    async def watch(self) -> None:
        """The node's own round, gateway or not: its auto mode entered or left."""
        node = self.node
        while True:
            await asyncio.sleep(POLL_SECONDS)
            with contextlib.suppress(Exception):  # a bad reading must not end the round
                await node.refresh()
            mode = node.auto_due()
            if mode is not None:
                await node.set_mode(mode, node.config.nodes[node.name].modes[mode].stop_models)

    def parts(self) -> list[str]:
        """The models across nodes that hold a part here."""
        config = self.node.config
        here = self.node.name
        return [
            m
            for m, spec in config.models.items()
            if here in spec.parts_on or (spec.spans_auto and config.node_of(m) != here)
        ]


def create_agent_app(config: Config, node: str) -> Starlette:
    agent = Agent(config, node)

    def authorized(request: Request) -> bool:
        if agent.token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {agent.token}".encode())

    def named(request: Request, known: list[str], missing: str) -> str | Response:
        """The path's model, if the token is right and it is one of ``known``."""
        if not authorized(request):
            return error_response(401, "wrong or missing agent token (Authorization: Bearer …)")
        name = str(request.path_params["name"])
        if name not in known:
            return error_response(404, f"model {name!r} {missing} on node {node}")
        return name

    def timeout_of(body: dict[str, Any]) -> float | Response:
        """A start's ``timeout``: seconds, positive and finite; else the config's."""
        given = body.get("timeout")
        if given is None:
            return config.scheduler.start_timeout
        if isinstance(given, bool) or not isinstance(given, int | float) or not 0 < given < 1e6:
            why = f"`timeout` must be a positive number of seconds, not {given!r}"
            return error_response(400, why[:200], param="timeout")
        return float(given)

    def model_of(request: Request) -> str | Response:
        return named(request, agent.node.models(), "does not run")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": node, "version": __version__})

    async def status(request: Request) -> Response:
        if not authorized(request):
            return error_response(401, "wrong or missing agent token (Authorization: Bearer …)")
        await agent.node.refresh()
        return JSONResponse(agent.status())

    async def start(request: Request) -> Response:
        name = model_of(request)
        if isinstance(name, Response):
            return name
        body = await _json(request)
        timeout = timeout_of(body)
        if isinstance(timeout, Response):
            return timeout
        parts = None
        if "rpc" in body or "split" in body:
            rpc, split = body.get("rpc"), body.get("split")
            if not (
                isinstance(rpc, list)
                and isinstance(split, list)
                and rpc
                and all(isinstance(a, str) and a for a in rpc)
                and all(isinstance(w, int | float) and w >= 0 for w in split)
            ):
                why = "`rpc` (HOST:PORT strings) and `split` (numbers), together, or neither"
                return error_response(400, why, param="rpc")
            parts = Parts(tuple(rpc), tuple(float(w) for w in split))
        try:
            upstream, pid = await agent.node.start(name, timeout, parts)
        except StartError as exc:
            return error_response(503, str(exc), code=Code.START_FAILED)
        return JSONResponse(
            {
                "upstream": {
                    "base_url": upstream.base_url,
                    "model": upstream.model,
                    "headers": upstream.headers,
                },
                "pid": pid,
                "exits": agent.exits.get(name, 0),
            }
        )

    def part_of(request: Request) -> str | Response:
        return named(request, agent.parts(), "has no part (span)")

    async def start_part(request: Request) -> Response:
        name = part_of(request)
        if isinstance(name, Response):
            return name
        timeout = timeout_of(await _json(request))
        if isinstance(timeout, Response):
            return timeout
        try:
            address = await agent.node.start_part(name, timeout)
        except StartError as exc:
            return error_response(503, str(exc), code=Code.START_FAILED)
        return JSONResponse({"address": address, "exits": agent.exits.get(part_key(name), 0)})

    async def stop_part(request: Request) -> Response:
        name = part_of(request)
        if isinstance(name, Response):
            return name
        body = await _json(request)
        await agent.node.stop_part(name, str(body.get("reason") or "asked by the gateway"))
        return JSONResponse({"stopped": part_key(name)})

    async def stop(request: Request) -> Response:
        name = model_of(request)
        if isinstance(name, Response):
            return name
        body = await _json(request)
        await agent.node.stop(name, str(body.get("reason") or "asked by the gateway"))
        return JSONResponse({"stopped": name})

    async def logs(request: Request) -> Response:
        name = model_of(request)
        if isinstance(name, Response):
            return name
        follow, lines = log_query(request.query_params)
        if lines is None:
            return error_response(400, LINES_WANTED, param="lines")
        if follow:  # the last lines, then each new one as SSE (engine_log), until the gateway goes
            stream = agent.node.follow_logs(name, lines)
            await anext(stream)
            return StreamingResponse(
                sse_stream(stream), media_type="text/event-stream", headers=SSE_HEADERS
            )
        return JSONResponse({"model": name, "lines": await agent.node.logs(name, lines)})

    async def mode(request: Request) -> Response:
        if not authorized(request):
            return error_response(401, "wrong or missing agent token (Authorization: Bearer …)")
        body = await _json(request)
        wanted = body.get("mode")
        modes = config.nodes[node].modes
        if not isinstance(wanted, str) or wanted not in modes:
            return error_response(400, f"`mode` must be one of: {', '.join(modes)}", param="mode")
        stop_models = body.get("stop_models")
        if stop_models is None:
            stop_models = modes[wanted].stop_models
        agent.node.gate.set_by_hand(wanted)  # a person's mode wins over the auto mode
        await agent.node.set_mode(wanted, bool(stop_models))
        return JSONResponse(node_view(agent.node, agent.node.config))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await agent.supervisor.reap()  # what a killed run of this agent left: before serving
        await agent.node.refresh()
        watching = asyncio.create_task(agent.watch())
        try:
            yield
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await agent.node.close()
            await agent.store.close()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/agent/status", status),
            Route("/agent/mode", mode, methods=["PUT"]),
            Route("/agent/instances/{name:path}/start", start, methods=["POST"]),
            Route("/agent/instances/{name:path}/stop", stop, methods=["POST"]),
            Route("/agent/instances/{name:path}/logs", logs),
            Route("/agent/parts/{name:path}/start", start_part, methods=["POST"]),
            Route("/agent/parts/{name:path}/stop", stop_part, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.agent = agent
    return app


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    import orjson

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
