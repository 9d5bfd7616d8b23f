"""The Ollama front-end, generation: ``/api/chat``, ``/api/generate``, ``/api/embed`` and
``/api/embeddings`` (Home Assistant, Continue, Open WebUI, n8n, the ``ollama`` client), on
the same port and the one request path. The listing side (tags, ps, show, version, pull)
is :mod:`modelyard.gateway.ollama_models`.

Each request is translated onto Chat Completions (or Completions for ``raw``,
llama-server's ``/infill`` for ``suffix``, Embeddings) by ``ollama_body`` and its answer
back into Ollama's NDJSON by ``ollama_stream``. Names take Ollama's tags (``gemma:latest``
is ``gemma``). ``keep_alive`` becomes the serving instance's idle time (``0`` stops it once
the request is done, ``-1`` keeps it, a duration sets it; absent, the model's ``ttl``). A
call with no prompt loads the model (or, with ``keep_alive: 0``, unloads it), as Ollama's
does. Errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.errors import Code, Refusal, Refused
from modelyard.gateway import dispatch
from modelyard.gateway.connection import head_size
from modelyard.gateway.dispatch import Call
from modelyard.gateway.frontend import refused, until_gone
from modelyard.gateway.proxy import Translation
from modelyard.gateway.state import Gateway
from modelyard.ollama_body import (
    ChatAnswer,
    GenerateAnswer,
    chat_request,
    embed_answer,
    embed_request,
    generate_request,
    keep_alive_seconds,
    load_answer,
    untag,
)
from modelyard.openai_body import apply_edits, features

INFILL_LAST = b'"stop":true'  # llama-server's /infill stream has no [DONE]
# The upstream path (None: a load call), the OpenAI body, and its answer's translation.
Translated = tuple[str | None, dict[str, Any], Callable[[str, bool], Translation]]


def render(refusal: Refusal) -> Response:
    """A refusal as Ollama says errors: ``{"error": message}`` with the status."""
    headers = dict(refusal.headers) if refusal.headers else None
    return JSONResponse({"error": refusal.message}, status_code=refusal.status, headers=headers)


def _route(path: str, kind: str) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        def serve(gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any]) -> Any:
            return _serve(request, gw, path, kind, raw, began, me)

        return await until_gone(request, path, serve, render)

    return endpoint


async def _serve(
    request: Request, gw: Gateway, path: str, kind: str, raw: bytes, began: float,
    me: asyncio.Task[Any],
) -> Response:  # fmt: skip
    key = request.scope.get("state", {}).get("api_key")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        bad = Refusal(None, f"the request body is not valid JSON: {exc}", status=400)
        return refused(gw, path, began, key, bad, render)
    translated = _translate(body, kind)
    if len(translated) == 2:  # the problem with it: what, and the field
        problem = Refusal(Code.INVALID_REQUEST, str(translated[0]), param=str(translated[1]))
        return refused(gw, path, began, key, problem, render)
    upstream_path, out, answer = translated
    written = str(body["model"])
    name = untag(written, [*gw.config.names(), *gw.config.tiers, *gw.config.personas])
    asked = name or written
    keep = keep_alive_seconds(body.get("keep_alive"))
    assert not isinstance(keep, tuple), "checked by the request's translation"
    if upstream_path is None:  # no prompt: load the model, or with keep_alive 0 unload it
        return await _load(gw, asked, written, kind, keep)
    stream = out.get("stream") is True
    endpoint = {"/embeddings": "embeddings", "/completions": "completions"}.get(
        upstream_path, "chat"
    )
    out["model"] = asked
    found = features(out, request.headers, gw.routing_headers, endpoint, *head_size(request.scope))
    infill = upstream_path == "/infill"
    call = Call(
        upstream_path, endpoint, asked, out, None, stream, request.headers, found,
        apply_edits, key, began, me, translate=lambda: answer(written, stream),
        keepalive=False, from_root=infill,
        last_event=INFILL_LAST if infill else b"data: [DONE]",
    )  # fmt: skip
    decision = dispatch.admit(gw, call, render)
    if isinstance(decision, Response):
        return decision
    if infill:
        engine = dispatch.first_model(gw, decision)
        if engine is None or engine.engine != "llama.cpp":
            why = "`suffix` (fill in the middle) needs a llama.cpp model, whose server has /infill"
            return dispatch.refuse(gw, call, Refusal(Code.INVALID_REQUEST, why, "suffix"), render)
    if decision.model is not None:
        gw.scheduler.keep_alive(decision.model, keep)
    return await dispatch.run(gw, call, decision, render)


def _translate(body: Any, kind: str) -> Translated | tuple[str, str]:
    """(upstream path or None for a load, the OpenAI body, its answer's translation), or
    the problem with the request."""
    if kind == "chat":
        chat = chat_request(body)
        if isinstance(chat, tuple):
            return chat
        return ("/chat/completions" if chat.get("messages") else None), chat, ChatAnswer
    if kind == "generate":
        found = generate_request(body)
        if len(found) == 2 and isinstance(found[1], str):  # a Problem: message, field
            return (str(found[0]), found[1])
        path, out = found
        assert isinstance(out, dict)
        return path, out, GenerateAnswer
    legacy = kind == "embeddings"
    embed = embed_request(body, legacy=legacy)
    if isinstance(embed, tuple):
        return embed

    def embedded(model: str, stream: bool) -> Translation:
        return EmbedAnswer(model, legacy)

    return ("/embeddings" if embed.get("input") else None), embed, embedded


class EmbedAnswer:
    """An OpenAI embeddings answer made Ollama's (``/api/embed`` or legacy ``/api/embeddings``)."""

    content_type = "application/json"

    def __init__(self, model: str, legacy: bool) -> None:
        self.model, self.legacy, self.began = model, legacy, time.monotonic()

    def whole(self, body: bytes) -> bytes:
        answer = orjson.loads(body)
        took = time.monotonic() - self.began
        return orjson.dumps(embed_answer(answer, self.model, self.legacy, took=took))

    def error(self, status: int, body: bytes) -> bytes:
        try:
            said = orjson.loads(body)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            said = body[:500].decode("utf-8", "replace")
        return orjson.dumps({"error": str(said)})

    def feed(self, chunk: bytes) -> bytes:  # embeddings are never streamed
        return chunk

    def end(self) -> bytes:
        return b""


async def _load(gw: Gateway, asked: str, written: str, kind: str, keep: float | None) -> Response:
    """Ollama's load call (no prompt): start the model, or stop it for ``keep_alive: 0``."""
    named = gw.config.resolve(asked)
    if named is None:
        return render(dispatch.no_target(gw, written))
    wanted = "embeddings" if kind in ("embed", "embeddings") else "chat"
    if wanted not in named.endpoints and not (
        wanted == "chat" and "completions" in named.endpoints
    ):
        why = f"{written} does not serve {wanted}; {named.unserved_hint(wanted)}"
        return render(Refusal(Code.UNSUPPORTED_ENDPOINT, why))
    if keep == 0:
        await gw.scheduler.stop(named.name)
        return JSONResponse(load_answer(written, chat=kind == "chat", unload=True))
    try:
        await gw.scheduler.start(named.name, timeout=gw.config.wait_limit(named.name))
    except Refused as exc:
        return render(Refusal(exc.code, exc.reason))
    gw.scheduler.keep_alive(named.name, keep)
    if kind != "chat" and kind != "generate":
        return JSONResponse(embed_answer({"data": []}, written, kind == "embeddings"))
    return JSONResponse(load_answer(written, chat=kind == "chat"))


routes = [
    Route("/api/chat", _route("/api/chat", "chat"), methods=["POST"]),
    Route("/api/generate", _route("/api/generate", "generate"), methods=["POST"]),
    Route("/api/embed", _route("/api/embed", "embed"), methods=["POST"]),
    Route("/api/embeddings", _route("/api/embeddings", "embeddings"), methods=["POST"]),
]
