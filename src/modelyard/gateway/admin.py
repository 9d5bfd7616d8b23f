"""The management API: status, models, start/stop/restart, logs."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from modelyard.config import ConfigError, load_config
from modelyard.engine_log import LINES_WANTED, SSE_HEADERS, log_query, sse_stream
from modelyard.errors import (
    AgentError,
    Code,
    Refusal,
    Refused,
    ReloadRefused,
)
from modelyard.gateway import events_api
from modelyard.gateway.body import body_or_refusal
from modelyard.gateway.errors import error_response, openai_error
from modelyard.gateway.state import Gateway
from modelyard.nodes import LocalNode
from modelyard.openai_body import features
from modelyard.routing import route
from modelyard.units import parse_duration
from modelyard.views import model_view, node_view


async def read_json(request: Request) -> Any:
    """The body as JSON, or the 4xx that says why not (too large, too deep, not JSON)."""
    gw: Gateway = request.app.state.gateway
    access = gw.config.access
    raw = await body_or_refusal(request.receive, access.body_timeout)
    if isinstance(raw, Response):
        return raw
    if not raw:
        return None
    try:
        return orjson.loads(raw)  # nested at most 1,024 deep: deeper is an error, not a crash
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"the request body is not valid JSON: {exc}")


async def status(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse(gw.status())


async def models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"models": [model_view(gw.scheduler, n) for n in gw.config.models]})


def _model(request: Request) -> tuple[Gateway, str] | Response:
    gw: Gateway = request.app.state.gateway
    asked = request.path_params["name"]
    model = gw.config.resolve(asked)
    if model is None:
        known = ", ".join(gw.config.names())
        missing = f"model {asked!r} does not exist; known models: {known}"
        return openai_error(Refusal(Code.MODEL_NOT_FOUND, missing))
    return gw, model.name


async def start(request: Request) -> Response:
    found = _model(request)
    if isinstance(found, Response):
        return found
    gw, name = found
    try:
        await gw.scheduler.start(name, timeout=gw.config.wait_limit(name))
    except Refused as exc:
        return openai_error(Refusal(Code.START_FAILED, exc.reason, status=exc.status))
    return JSONResponse(model_view(gw.scheduler, name))


async def stop(request: Request) -> Response:
    found = _model(request)
    if isinstance(found, Response):
        return found
    gw, name = found
    await gw.scheduler.stop(name)
    return JSONResponse(model_view(gw.scheduler, name))


async def restart(request: Request) -> Response:
    found = _model(request)
    if isinstance(found, Response):
        return found
    gw, name = found
    await gw.scheduler.stop(name)
    try:
        await gw.scheduler.start(name, timeout=gw.config.wait_limit(name))
    except Refused as exc:
        return openai_error(Refusal(Code.START_FAILED, exc.reason, status=exc.status))
    return JSONResponse(model_view(gw.scheduler, name))


async def logs(request: Request) -> Response:
    """The engine log's last ``lines`` lines; with ``?follow=1``, then each new line as it
    comes, as Server-Sent Events (``engine_log``), through the model's restarts."""
    found = _model(request)
    if isinstance(found, Response):
        return found
    gw, name = found
    follow, lines = log_query(request.query_params)
    if lines is None:
        return error_response(400, LINES_WANTED, param="lines")
    node = gw.nodes[gw.config.node_of(name)]
    if follow:
        stream = node.follow_logs(name, lines)
        try:
            await anext(stream)  # following: the listener is in place, or the agent answered
        except AgentError as exc:
            return openai_error(Refusal(Code.NODE_UNREACHABLE, exc.message))
        except StopAsyncIteration:
            unreachable = f"the engine log of {name} could not be followed: its node closed it"
            return openai_error(Refusal(Code.NODE_UNREACHABLE, unreachable))
        return StreamingResponse(
            sse_stream(stream), media_type="text/event-stream", headers=SSE_HEADERS
        )
    try:
        tail = await node.logs(name, lines)
    except AgentError as exc:
        return openai_error(Refusal(Code.NODE_UNREACHABLE, exc.message))
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"model": name, "lines": tail})
    return PlainTextResponse("\n".join(tail) + ("\n" if tail else ""))


async def nodes(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"nodes": [node_view(node, gw.config) for node in gw.nodes.values()]})


async def set_mode(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    name = request.path_params["node"]
    if name not in gw.nodes:
        return error_response(404, f"no node {name!r}; nodes: {', '.join(gw.nodes)}")
    body = await read_json(request)
    if isinstance(body, Response):
        return body
    modes = gw.config.nodes[name].modes
    wanted = body.get("mode") if isinstance(body, dict) else None
    if not isinstance(wanted, str) or wanted not in modes:
        return error_response(
            400, f'expected {{"mode": NAME}} with NAME one of: {", ".join(modes)}', param="mode"
        )
    before = gw.watch.node_views()
    node = gw.nodes[name]
    if isinstance(node, LocalNode):
        node.gate.set_by_hand(wanted)  # a person's mode wins over the auto mode
    try:
        await gw.scheduler.set_mode(name, wanted)
    except AgentError as exc:
        return openai_error(Refusal(Code.NODE_UNREACHABLE, exc.message))
    finally:
        gw.watch.publish_nodes(before)
    return JSONResponse(node_view(gw.nodes[name], gw.config))


async def decisions(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        limit = int(request.query_params.get("limit", "50"))
    except ValueError:
        return error_response(400, "`limit` must be a whole number, e.g. ?limit=50")
    return JSONResponse({"decisions": gw.store.decisions(max(1, min(limit, 1000)))})


async def requests(request: Request) -> Response:
    """The request log, newest first: ``?model=&key=&asked=&node=&outcome=&status=&decision=``,
    ``since=10m`` (that long back), ``limit=`` (1 to 1000, default 50)."""
    gw: Gateway = request.app.state.gateway
    query = dict(request.query_params)
    try:
        limit = max(1, min(int(query.pop("limit", "50")), 1000))
        since = query.pop("since", None)
        after = time.time() - parse_duration(since) if since is not None else None
        filters: dict[str, str | int] = dict(query)
        if "status" in filters:
            filters["status"] = int(filters["status"])
        rows = gw.store.requests(filters, after, limit)
    except ValueError as exc:
        return error_response(
            400,
            f"{exc}; expected e.g. ?model=NAME&outcome=ok&status=200&since=10m&limit=50 "
            "(filters: key, asked, model, node, outcome, status, decision)",
        )
    return JSONResponse({"requests": rows})


async def decision(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    found = gw.store.decision_by_id(request.path_params["id"])
    if found is None:
        return error_response(404, f"no decision {request.path_params['id']!r}")
    return JSONResponse(found)


async def explain(request: Request) -> Response:
    """The decision a request would get now, without sending it."""
    gw: Gateway = request.app.state.gateway
    body = await read_json(request)
    if isinstance(body, Response):
        return body
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        return error_response(
            400, 'expected {"request": {OpenAI body}, "headers": {name: value}}', param="request"
        )
    headers = body.get("headers") or {}
    if not isinstance(headers, dict):
        return error_response(400, "`headers` must be an object of names to values")
    req = features(body["request"], {str(k): str(v) for k, v in headers.items()})
    return JSONResponse(route(gw.config, req, gw.watch.cluster()).as_dict())


async def reload(request: Request) -> Response:
    """Read the config file again; apply it only if it validates (else the old one stays)."""
    gw: Gateway = request.app.state.gateway
    source = gw.config.source
    if source is None:
        return error_response(409, "this gateway was not started from a config file")
    try:
        new = load_config(source)
    except ConfigError as exc:
        invalid = "the new config did not validate; the running one stays:\n" + str(exc)
        return openai_error(Refusal(Code.INVALID_CONFIG, invalid))
    try:
        applied = await gw.reload(new)
    except ReloadRefused as exc:
        return openai_error(Refusal(Code.RESTART_NEEDED, f"{exc}; the running config stays"))
    return JSONResponse({"reloaded": str(source), **applied})


async def config_text(request: Request) -> Response:
    """The config file as it is on disk now (``${ENV}`` references unexpanded, so secrets
    given that way are not shown), for reading before a reload."""
    gw: Gateway = request.app.state.gateway
    source = gw.config.source
    if source is None:
        return error_response(409, "this gateway was not started from a config file")
    try:
        text = source.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return error_response(409, f"cannot read {source}: {exc.strerror or exc}")
    return JSONResponse({"path": str(source), "text": text})


routes = [
    Route("/admin/events", events_api.events, methods=["GET"]),
    Route("/admin/config", config_text, methods=["GET"]),
    Route("/admin/reload", reload, methods=["POST"]),
    Route("/admin/decisions", decisions, methods=["GET"]),
    Route("/admin/decisions/{id}", decision, methods=["GET"]),
    Route("/admin/requests", requests, methods=["GET"]),
    Route("/admin/route/explain", explain, methods=["POST"]),
    Route("/admin/nodes", nodes, methods=["GET"]),
    Route("/admin/nodes/{node}/mode", set_mode, methods=["PUT"]),
    Route("/admin/status", status, methods=["GET"]),
    Route("/admin/models", models, methods=["GET"]),
    Route("/admin/models/{name:path}/start", start, methods=["POST"]),
    Route("/admin/models/{name:path}/stop", stop, methods=["POST"]),
    Route("/admin/models/{name:path}/restart", restart, methods=["POST"]),
    Route("/admin/models/{name:path}/logs", logs, methods=["GET"]),
]
