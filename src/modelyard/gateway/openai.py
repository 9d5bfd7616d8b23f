"""The OpenAI-compatible API: chat, completions, embeddings and the model list."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.config import ApiKey
from modelyard.gateway.access import may_use
from modelyard.gateway.attempt import Attempt, rejected
from modelyard.gateway.body import CLOSE, BodyStalled, BodyTooLarge, read_body
from modelyard.gateway.connection import HEAD_KEY
from modelyard.gateway.errors import error_response
from modelyard.gateway.keepalive import stream_or_wait
from modelyard.gateway.openai_shape import shape_problem
from modelyard.gateway.proxy import ProxyStream, Result, UpstreamUnavailable, forward
from modelyard.gateway.state import Gateway
from modelyard.gateway.timeouts import Deadline, limits_for
from modelyard.gateway.watch import ClientWatch
from modelyard.instance import Refused
from modelyard.routing import AUTO, Decision, features, route, strip_tags
from modelyard.views import model_cards

_TRUE = {"1", "true", "yes", "on"}
_ENDPOINTS = {
    "/chat/completions": "chat",
    "/completions": "completions",
    "/embeddings": "embeddings",
}


async def chat_completions(request: Request) -> Response:
    return await _until_gone(request, "/chat/completions")


async def completions(request: Request) -> Response:
    return await _until_gone(request, "/completions")


async def embeddings(request: Request) -> Response:
    return await _until_gone(request, "/embeddings")


async def _until_gone(request: Request, path: str) -> Response:
    """Serve the request until it is answered or the client goes away, whichever is first.

    A client that disconnects while queued, while its model loads, while a non-streamed
    answer is generated or while a stream is relayed cancels the work: its place in the
    queue goes, its slot comes back (``finally``) and the upstream request is closed, which
    stops the generation.
    """
    arrived = time.monotonic()
    gw: Gateway = request.app.state.gateway
    access = gw.config.access
    try:
        # Read first: the watch below only sees what follows.
        raw = await read_body(request.receive, access.max_body, access.body_timeout)
    except ClientDisconnect:
        return _left_early(request, path, arrived, b"")
    except BodyTooLarge as exc:
        refusal = error_response(413, str(exc), headers=dict(CLOSE))
        return _left_early(request, path, arrived, b"", refusal)
    except BodyStalled as exc:
        refusal = error_response(408, str(exc), code="body_timeout", headers=dict(CLOSE))
        return _left_early(request, path, arrived, b"", refusal)
    began = time.monotonic()  # the upload is not waiting: the request's time starts here
    me = asyncio.current_task()
    assert me is not None, "an ASGI app runs in a task"
    watch = ClientWatch(request.receive, me)
    answer: Response | None = None
    try:
        answer = await _proxy(request, path, began, raw, me)
        return answer
    except asyncio.CancelledError:
        if watch.swallow():
            return Response(status_code=499)  # nobody is there to read it
        raise  # cancelled by the server itself (shutdown): not ours to swallow
    finally:
        if isinstance(answer, ProxyStream):
            answer.watch = watch  # on until the stream ends
        else:
            watch.stop()


def _left_early(
    request: Request, path: str, began: float, raw: bytes, answer: Response | None = None
) -> Response:
    gw: Gateway = request.app.state.gateway
    key = request.scope.get("state", {}).get("api_key")
    gone = answer or error_response(499, "the client went away before its request was handled")
    return rejected(gw, path, raw, began, key.name if key else None, gone)


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"object": "list", "data": model_cards(gw.scheduler, gw.started)})


async def retrieve_model(request: Request) -> Response:
    """One model, tier or ``auto`` by its id or an alias (the SDKs' ``models.retrieve``)."""
    gw: Gateway = request.app.state.gateway
    asked = request.path_params["model"]
    named = gw.config.resolve(asked)
    wanted = named.name if named is not None else asked
    for card in model_cards(gw.scheduler, gw.started):
        if card["id"] == wanted:
            return JSONResponse(card)
    return _no_target(gw, asked)


async def _proxy(
    request: Request, path: str, began: float, raw: bytes, owner: asyncio.Task[Any]
) -> Response:
    gw: Gateway = request.app.state.gateway
    key = request.scope.get("state", {}).get("api_key")
    admitted = _admit(gw, raw, request, key, path)
    if isinstance(admitted, Response):
        return rejected(gw, path, raw, began, key.name if key else None, admitted)
    body, decision = admitted
    if decision.strip:
        body = strip_tags(body, decision.strip)
    stream = body.get("stream") is True
    no_swap = request.headers.get("x-modelyard-no-swap", "").lower() in _TRUE
    attempt = Attempt(gw, decision, path, stream, began, key.name if key else None)

    deadline = Deadline(request.headers, stream, began)
    priority = key.priority if key is not None else 0

    async def serve() -> Response:
        try:
            return await hops()
        except asyncio.CancelledError:
            attempt.gone()
            raise

    async def hops() -> Response:
        for name in decision.candidates:
            if deadline.passed():
                attempt.turned_down(name, 504, f"not tried: {deadline.why()} has passed", None)
                break  # nobody would read the answer: no hidden retries past it
            wait, cut = deadline.bound(gw.wait_timeout(name))
            asked_at = time.monotonic()
            try:
                lease = await gw.scheduler.acquire(
                    name, no_swap, wait, force=decision.forced, priority=priority, owner=owner
                )
            except Refused as exc:
                if cut and exc.timed_out:
                    why = f"{name} was not ready before {deadline.why()} passed"
                    attempt.turned_down(name, 504, why, None)
                    break
                attempt.turned_down(name, exc.status, exc.reason, exc.retry_after)
                continue
            upstream = lease.instance.upstream
            assert upstream is not None, "acquire grants only an instance with a server"
            forwarded = {**body, "model": upstream.model} if upstream.model else body
            data = raw if forwarded is body and not decision.strip else orjson.dumps(forwarded)
            finish = attempt.done(name, lease, asked_at)
            try:
                return await forward(
                    gw.client,
                    upstream,
                    path,
                    data,
                    stream=stream,
                    asked_model=name,
                    headers=attempt.headers(name, lease.id),
                    limits=limits_for(gw.config, name, deadline),
                    done=finish,
                )
            except UpstreamUnavailable as exc:
                # The next candidate, or the refusal, decides what the client gets.
                finish(Result(exc.status, str(exc)), decided=False)
                attempt.turned_down(name, exc.status, str(exc), None)
            except BaseException:
                finish(Result(499, "client went away before the answer started"))
                raise
        return attempt.refusal()

    if not stream:
        return await serve()
    return await stream_or_wait(
        asyncio.ensure_future(serve()), {"x-modelyard-decision": attempt.id}
    )


def _admit(
    gw: Gateway, raw: bytes, request: Request, key: ApiKey | None, path: str
) -> tuple[dict[str, Any], Decision] | Response:
    """The body and its routing decision, or the 4xx that says what is wrong with it."""
    parsed = _parse(raw, gw)
    if isinstance(parsed, Response):
        return parsed
    body, asked = parsed
    named = gw.config.resolve(asked)
    if key is not None and not may_use(key, asked, named.name if named else None):
        return error_response(
            403,
            f"API key {key.name!r} may not use {asked!r}; "
            f"it may use: {', '.join(key.models or [])}",
            code="model_not_allowed",
            param="model",
        )
    head = request.scope.get(HEAD_KEY)  # counted by the connection as it read them
    if head is None:
        raw_headers = request.scope["headers"]
        head = (len(raw_headers), sum(len(k) + len(v) + 4 for k, v in raw_headers))
    found = features(body, request.headers, gw.routing_headers, _ENDPOINTS[path], *head)
    decision = route(gw.config, found, gw.cluster())
    if decision.target is None:
        return _no_target(gw, asked)
    problem = shape_problem(path, body)  # after the name: an unknown model is a 404 first
    if problem is not None:
        return error_response(400, problem[0], param=problem[1], code="invalid_request")
    return body, decision


def _no_target(gw: Gateway, asked: str) -> Response:
    if asked == AUTO:
        return error_response(
            400,
            "`auto` needs a policy rule with `use` that holds for this request; none did",
            param="model",
            code="no_route",
        )
    names = [*gw.known_names(), *gw.config.tiers]
    return error_response(
        404,
        f"model {asked!r} does not exist; known models and tiers: {', '.join(names)}",
        code="model_not_found",
        param="model",
    )


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
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
