"""The Anthropic Messages front-end: ``POST /v1/messages`` and ``/v1/messages/count_tokens``
(Claude Code and the ``anthropic`` SDKs), on the same port and the one request path.

A request is checked and read for routing, policy and admission as it came
(``anthropic_body.read``). An engine that speaks Messages itself (llama-server, vLLM;
``models.NAME.protocols``) gets it as it came and its answer passes back as bytes; another
(or any, once a persona edits it) gets its Chat Completions translation
(``anthropic_body.translate``, made only then), and its answer is made a Messages answer as
it streams (``anthropic_answer.MessagesAnswer``). ``x-modelyard-protocol`` says which.
Refusals are in Anthropic's error shape. ``x-api-key`` is a key like ``Authorization`` (access.py);
``anthropic-version`` and ``anthropic-beta`` are accepted and not checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.anthropic_answer import MessagesAnswer
from modelyard.anthropic_body import error, read, translate
from modelyard.errors import Code, Refusal
from modelyard.gateway import dispatch
from modelyard.gateway.connection import head_size
from modelyard.gateway.dispatch import Call, Native
from modelyard.gateway.frontend import json_request, refused, until_gone
from modelyard.gateway.state import Gateway
from modelyard.openai_body import apply_edits, features

LAST_EVENT = b"message_stop"


def render(refusal: Refusal) -> Response:
    """A refusal in Anthropic's error shape, with its status and headers."""
    headers = dict(refusal.headers) if refusal.headers else None
    return JSONResponse(
        error(refusal.status, refusal.message), status_code=refusal.status, headers=headers
    )


async def messages(request: Request) -> Response:
    """``POST /v1/messages``."""

    def serve(gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any]) -> Any:
        return _serve(request, gw, raw, began, me, count=False)

    return await until_gone(request, "/messages", serve, render)


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: the engine's own count where it speaks Messages,
    else the gateway's estimate (the one routing uses), said so in
    ``x-modelyard-estimate``."""

    def serve(gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any]) -> Any:
        return _serve(request, gw, raw, began, me, count=True)

    return await until_gone(request, "/messages/count_tokens", serve, render)


async def _serve(
    request: Request, gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any], count: bool
) -> Response:
    path = "/messages/count_tokens" if count else "/messages"
    key = request.scope.get("state", {}).get("api_key")
    parsed = json_request(gw, path, raw, began, key, render)
    if isinstance(parsed, Response):
        return parsed
    body, asked = parsed
    if count:  # counted as if it were sent: max_tokens is not needed for that
        body = {"max_tokens": 1, **body}
    said = read(body)  # every check; translated only if a hop needs it
    stream = body.get("stream") is True and not count
    if isinstance(said, tuple):
        problem = Refusal(Code.INVALID_REQUEST, said[0], param=said[1])
        return refused(gw, path, began, key, problem, render)
    head = head_size(request.scope)
    found = features(body, request.headers, gw.routing_headers, "chat", *head, text=said)
    native = Native("anthropic", path, raw, LAST_EVENT, lambda: translate(body))
    call = Call(
        path if count else "/chat/completions", "chat", asked, body, None, stream,
        request.headers, found, apply_edits, key, began, me,
        native=native, translate=None if count else (lambda: MessagesAnswer(asked)),
    )  # fmt: skip
    decision = dispatch.admit(gw, call, render)
    if isinstance(decision, Response):
        return decision
    if count:
        target = dispatch.first_model(gw, decision)
        if target is None or "anthropic" not in target.speaks or decision.edits:
            # No engine to ask: the gateway's own estimate, as routing counted it.
            estimate = {"input_tokens": found.tokens}
            return JSONResponse(estimate, headers={"x-modelyard-estimate": "true"})
    return await dispatch.run(gw, call, decision, render)


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
