"""The ASGI app: OpenAI API, management API, health."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from modelyard import __version__
from modelyard.config import Config, ConfigError, load_config
from modelyard.errors import BodyTooLarge, Code, Refusal, ReloadRefused
from modelyard.gateway import (
    admin,
    anthropic,
    conversations_api,
    events_api,
    ollama,
    ollama_models,
    openai,
    persona_api,
    responses,
    session,
    upstream_api,
)
from modelyard.gateway.access import AccessGuard
from modelyard.gateway.body import CLOSE
from modelyard.gateway.errors import error_response, openai_error
from modelyard.gateway.inner import InnerClient
from modelyard.gateway.lane import OpenAILane
from modelyard.gateway.state import Gateway
from modelyard.lifecycle import State
from modelyard.telemetry import CONTENT_TYPE


async def health(request: Request) -> Response:
    """The gateway process answers, and which release it runs."""
    return JSONResponse({"status": "ok", "version": __version__})


async def ready(request: Request) -> Response:
    """200 once the gateway takes requests; with ``?model=NAME``, only once that one is ready."""
    gw: Gateway = request.app.state.gateway
    asked = request.query_params.get("model")
    if asked is None:
        return JSONResponse({"status": "ready"})
    model = gw.config.resolve(asked)
    if model is None:
        return openai_error(Refusal(Code.MODEL_NOT_FOUND, f"model {asked!r} does not exist"))
    state = gw.scheduler.instances[model.name].state
    code = 200 if state is State.READY else 503
    return JSONResponse({"model": model.name, "state": state.value}, status_code=code)


async def metrics(request: Request) -> Response:
    """Prometheus text format: requests, latency, tokens, instances, queues, nodes, GPUs."""
    gw: Gateway = request.app.state.gateway
    return Response(gw.telemetry.render(), media_type=CONTENT_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no such endpoint: {request.method} {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message)


async def _too_large(request: Request, exc: Exception) -> Response:
    # A chunked body past access.max_body, read by any route: the rest is never read.
    return error_response(413, str(exc), headers=dict(CLOSE))


async def _reload_on_signal(gateway: Gateway) -> None:
    """SIGHUP: read the config file again and apply it if it validates; say what happened."""
    if gateway.config.source is None:
        return
    try:
        applied = await gateway.reload(load_config(gateway.config.source))
    except (ConfigError, ReloadRefused) as exc:
        print(f"modelyard: reload refused, the running config stays:\n{exc}", file=sys.stderr)
        return
    print(f"modelyard: config reloaded: {applied}", file=sys.stderr)


def _tune_gc() -> None:
    """Collect cycles less often than CPython's default, and never look at startup's objects.

    Each request makes and drops a few hundred containers (frames, coroutines, dicts); at
    the default of a young collection every 700 allocations, objects of requests still in
    flight were traversed and promoted over and over: 117k of the 1,602k instructions a
    request cost (bench/instructions.py, docs/benchmarks.md). Garbage not in a cycle is
    freed at once either way; only cyclic garbage waits longer, up to 20,000 objects.
    """
    gc.collect()
    gc.freeze()  # config, modules, routes: alive for good, so out of every collection
    gc.set_threshold(20_000, 20, 20)


def create_app(config: Config) -> ASGIApp:
    """The gateway for ``config``; processes start on first use and stop on shutdown."""
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.open()
        _tune_gc()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no SIGHUP on Windows
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(_reload_on_signal(gateway))
            )
        try:
            yield
        finally:
            await gateway.close()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
            Route("/console/api/models/events", events_api.model_events, methods=["GET"]),
            *openai.routes,
            *anthropic.routes,
            *responses.routes,
            *ollama.routes,
            *ollama_models.routes,
            *persona_api.routes,
            *admin.routes,
            *session.routes,
            *conversations_api.routes,
            *upstream_api.routes,
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, BodyTooLarge: _too_large},
    )
    app.state.gateway = gateway
    # The guard first, for every path; then the lane for the OpenAI POSTs, Starlette for
    # the rest.
    lane = {
        r.path: r.endpoint
        for front in (openai, anthropic, responses, ollama)
        for r in front.routes
        if "POST" in (r.methods or ())
    }
    routes = OpenAILane(app, lane)
    gateway.inner = InnerClient(routes)  # a persona's /listen, the Wyoming listener
    return AccessGuard(routes, access=config.access, sessions=gateway.sessions)
