"""The OpenAI-compatible API: chat, completions, embeddings and the model list."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.gateway.errors import error_response
from modelyard.gateway.proxy import forward
from modelyard.gateway.state import Gateway
from modelyard.scheduler import Refused

_TRUE = {"1", "true", "yes", "on"}


async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "/chat/completions")


async def completions(request: Request) -> Response:
    return await _proxy(request, "/completions")


async def embeddings(request: Request) -> Response:
    return await _proxy(request, "/embeddings")


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"object": "list", "data": gw.model_cards()})


async def _proxy(request: Request, path: str) -> Response:
    gw: Gateway = request.app.state.gateway
    began = time.monotonic()
    raw = await request.body()
    parsed = _parse(raw, gw)
    if isinstance(parsed, Response):
        return parsed
    body, asked = parsed
    model = gw.config.resolve(asked)
    if model is None:
        return error_response(
            404,
            f"model {asked!r} does not exist; known models: {', '.join(gw.known_names())}",
            code="model_not_found",
            param="model",
        )
    stream = body.get("stream") is True
    no_swap = request.headers.get("x-modelyard-no-swap", "").lower() in _TRUE
    try:
        inst = await gw.scheduler.acquire(model.name, no_swap, timeout=gw.wait_timeout(model.name))
    except Refused as exc:
        gw.store.request(
            model.name, None, path, exc.status, stream, None, time.monotonic() - began, exc.reason
        )
        headers = {"x-modelyard-model": model.name}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        code = "swap_refused" if exc.status == 409 else "model_unavailable"
        return error_response(exc.status, exc.reason, code=code, headers=headers)
    waited = time.monotonic() - began
    upstream = inst.upstream
    assert upstream is not None, "a granted instance is ready"
    if upstream.model and body.get("model") != upstream.model:
        body["model"] = upstream.model  # the one change the forwarded body may need
        raw = orjson.dumps(body)
    released = False

    def done(status: int, error: str | None) -> None:
        nonlocal released
        if released:
            return
        released = True
        gw.scheduler.release(inst)
        gw.store.request(
            model.name, inst.id, path, status, stream, waited, time.monotonic() - began, error
        )

    headers = {"x-modelyard-model": model.name, "x-modelyard-instance": inst.id}
    try:
        return await forward(
            gw.session,
            upstream,
            path,
            raw,
            stream=stream,
            asked_model=asked,
            headers=headers,
            done=done,
        )
    except BaseException:
        done(499, "client went away before the answer started")
        raise


def _parse(raw: bytes, gw: Gateway) -> tuple[dict[str, Any], str] | Response:
    """The body as a dict and the model asked for, or the 400 that says what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"the request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_response(400, "the request body must be a JSON object")
    asked = body.get("model")
    if not isinstance(asked, str) or not asked:
        return error_response(
            400,
            f"`model` is required, a string naming one of: {', '.join(gw.known_names())}",
            param="model",
        )
    return body, asked


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
