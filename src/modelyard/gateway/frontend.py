"""What every protocol front-end does around its own part: read the body within its limits,
serve, and stop at once when the client goes away (OpenAI, Anthropic Messages, OpenAI
Responses, Ollama). Each front-end gives its ``serve`` and its ``render`` (a refusal in its
protocol's error shape)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from modelyard.errors import BodyStalled, BodyTooLarge, Code, Refusal
from modelyard.gateway.attempt import rejected
from modelyard.gateway.body import CLOSE, read_body
from modelyard.gateway.dispatch import Render
from modelyard.gateway.proxy import ProxyStream
from modelyard.gateway.state import Gateway
from modelyard.gateway.watch import ClientWatch

Serve = Callable[[Gateway, bytes, float, asyncio.Task[Any]], Awaitable[Response]]


async def until_gone(request: Request, path: str, serve: Serve, render: Render) -> Response:
    """Serve the request until it is answered or the client goes away, whichever is first.

    ``serve(gw, raw, began, task)`` gets the body, read whole. A client that disconnects
    while queued, while its model loads, while a non-streamed answer is generated or while
    a stream is relayed cancels the work: its place in the queue goes, its slot comes back
    (``finally``) and the upstream request is closed, which stops the generation.
    """
    arrived = time.monotonic()
    gw: Gateway = request.app.state.gateway
    key = request.scope.get("state", {}).get("api_key")
    try:
        # Read first: the watch below only sees what follows.
        raw = await read_body(request.receive, gw.config.access.body_timeout)
    except ClientDisconnect:
        gone = Refusal(None, "the client went away before its request was handled", status=499)
        return refused(gw, path, arrived, key, gone, render)
    except BodyTooLarge as exc:
        too_large = Refusal(None, str(exc), headers=CLOSE, status=413)
        return refused(gw, path, arrived, key, too_large, render)
    except BodyStalled as exc:
        stalled = Refusal(Code.BODY_TIMEOUT, str(exc), headers=CLOSE)
        return refused(gw, path, arrived, key, stalled, render)
    began = time.monotonic()  # the upload is not waiting: the request's time starts here
    me = asyncio.current_task()
    assert me is not None, "an ASGI app runs in a task"
    watch = ClientWatch(request.receive, me)
    answer: Response | None = None
    try:
        answer = await serve(gw, raw, began, me)
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


def refused(
    gw: Gateway, path: str, began: float, key: Any, refusal: Refusal, render: Render
) -> Response:
    """A request refused before it named a model it may use (its body unread or not a
    request): logged with no model asked, then rendered."""
    rejected(gw, path, "", began, key.name if key else None, refusal)
    return render(refusal)


def json_request(
    gw: Gateway, path: str, raw: bytes, began: float, key: Any, render: Render
) -> tuple[dict[str, Any], str] | Response:
    """A JSON body naming its ``model``, and that name; or the refusal, logged and rendered."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        bad = Refusal(None, f"the request body is not valid JSON: {exc}", status=400)
        return refused(gw, path, began, key, bad, render)
    if not isinstance(body, dict):
        bad = Refusal(None, "the request body must be a JSON object", status=400)
        return refused(gw, path, began, key, bad, render)
    asked = body.get("model")
    if not isinstance(asked, str) or not asked:
        names = ", ".join(gw.config.names())
        bad = Refusal(None, f"`model` is required, a string naming one of: {names}", status=400)
        return refused(gw, path, began, key, bad, render)
    return body, asked
