"""The OpenAI front-end: chat, completions, embeddings, a persona's chat, audio (speech,
transcriptions: :mod:`modelyard.gateway.audio`) and the model list.

It reads a request's body within its limits, checks what every engine needs, makes a
:class:`~modelyard.gateway.dispatch.Call` of it and renders refusals in the OpenAI error
shape; :mod:`modelyard.gateway.dispatch` does the rest. The upstream's OpenAI answer
passes through as it came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.errors import Code, Refusal
from modelyard.gateway import audio, dispatch
from modelyard.gateway.capture import capture, conversation_of
from modelyard.gateway.connection import head_size
from modelyard.gateway.dispatch import Call
from modelyard.gateway.errors import openai_error
from modelyard.gateway.frontend import refused, until_gone
from modelyard.gateway.state import Gateway
from modelyard.openai_body import apply_edits, features, shape_problem
from modelyard.views import model_cards

_ENDPOINTS = {
    "/chat/completions": "chat",
    "/completions": "completions",
    "/embeddings": "embeddings",
    "/audio/speech": "speech",
}


async def chat_completions(request: Request) -> Response:
    return await _until_gone(request, "/chat/completions")


async def completions(request: Request) -> Response:
    return await _until_gone(request, "/completions")


async def embeddings(request: Request) -> Response:
    return await _until_gone(request, "/embeddings")


async def speech(request: Request) -> Response:
    """``POST /v1/audio/speech``: JSON in; the audio streams back as the worker writes it."""
    return await _until_gone(request, "/audio/speech")


async def transcriptions(request: Request) -> Response:
    """``POST /v1/audio/transcriptions``: a multipart upload, forwarded as it came."""
    return await _until_gone(request, "/audio/transcriptions")


async def translations(request: Request) -> Response:
    """``POST /v1/audio/translations``: into English, a multipart upload as it came."""
    return await _until_gone(request, "/audio/translations")


async def think(request: Request) -> Response:
    """``POST /v1/personas/{name}/think``: a chat with ``model`` set to the persona."""
    return await _until_gone(request, "/chat/completions", request.path_params["name"])


async def _until_gone(request: Request, path: str, persona: str | None = None) -> Response:
    """An OpenAI request, served until it is answered or its client goes away."""

    def serve(gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any]) -> Awaitable[Response]:
        if path in audio.PATHS:
            return audio.transcribe(request, gw, path, raw, began, me)
        serving = _serve(request, gw, path, raw, began, me, persona)
        # The console's chat, kept in its conversation: requests without the header pay
        # for this look at the headers alone.
        kept = conversation_of(request.scope) if path == "/chat/completions" else None
        if kept is not None:
            serving = capture(gw, request.scope, kept, raw, began, serving)
        return serving

    return await until_gone(request, path, serve, openai_error)


async def _serve(
    request: Request,
    gw: Gateway,
    path: str,
    raw: bytes,
    began: float,
    me: asyncio.Task[Any],
    persona: str | None = None,
) -> Response:
    key = request.scope.get("state", {}).get("api_key")
    parsed = _parse(raw, gw, persona)
    if isinstance(parsed, Refusal):
        return _refused(gw, path, began, key, parsed)
    body, asked = parsed
    if persona is not None:
        raw = orjson.dumps(body)  # the body names the persona now
    head = head_size(request.scope)
    endpoint = _ENDPOINTS[path]
    found = features(body, request.headers, gw.routing_headers, endpoint, *head)
    stream = body.get("stream") is True and endpoint != "speech"  # audio: never wrapped
    call = Call(
        path, endpoint, asked, body, raw, stream,
        request.headers, found, apply_edits, key, began, me,
    )  # fmt: skip
    decision = dispatch.admit(gw, call, openai_error, shape_problem(path, body))
    if isinstance(decision, Response):
        return decision
    return await dispatch.run(gw, call, decision, openai_error)


def _refused(gw: Gateway, path: str, began: float, key: Any, refusal: Refusal) -> Response:
    return refused(gw, path, began, key, refusal, openai_error)


def _parse(
    raw: bytes, gw: Gateway, persona: str | None = None
) -> tuple[dict[str, Any], str] | Refusal:
    """The body as a dict and the model asked for (``persona``, when the path names one),
    or the refusal that says what is wrong."""
    if persona is not None and persona not in gw.config.personas:
        return Refusal(
            Code.PERSONA_NOT_FOUND,
            f"persona {persona!r} does not exist; personas: "
            + (", ".join(gw.config.personas) or "none"),
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Refusal(None, f"the request body is not valid JSON: {exc}", status=400)
    if not isinstance(body, dict):
        return Refusal(None, "the request body must be a JSON object", status=400)
    if persona is not None:
        body["model"] = persona  # whatever the body said, the path names the persona
    asked = body.get("model")
    if not isinstance(asked, str) or not asked:
        return Refusal(
            None,
            f"`model` is required, a string naming one of: {', '.join(gw.config.names())}",
            param="model",
            status=400,
        )
    return body, asked


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"object": "list", "data": model_cards(gw.scheduler, gw.started)})


async def voices(request: Request) -> Response:
    """``GET /v1/audio/voices[?model=NAME]``: the voices of the speech models (or of one),
    from the config: nothing is started to answer."""
    gw: Gateway = request.app.state.gateway
    asked = request.query_params.get("model")
    if asked is not None:
        named = gw.config.resolve(asked)
        if named is None or "speech" not in named.endpoints:
            speakers = [m.name for m in gw.config.models.values() if "speech" in m.endpoints]
            refusal = Refusal(
                Code.MODEL_NOT_FOUND,
                f"{asked!r} is not a model that speaks; those that do: "
                + (", ".join(speakers) or "none"),
                param="model",
            )
            return openai_error(refusal)
        chosen = [named]
    else:
        chosen = [m for m in gw.config.models.values() if "speech" in m.endpoints]
    data = [
        {"id": voice, "object": "voice", "model": model.name}
        for model in chosen
        for voice in model.voices
    ]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """One model, tier or ``auto`` by its id or an alias (the SDKs' ``models.retrieve``)."""
    gw: Gateway = request.app.state.gateway
    asked = request.path_params["model"]
    named = gw.config.resolve(asked)
    wanted = named.name if named is not None else asked
    for card in model_cards(gw.scheduler, gw.started):
        if card["id"] == wanted:
            return JSONResponse(card)
    return openai_error(dispatch.no_target(gw, asked))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/audio/speech", speech, methods=["POST"]),
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
    Route("/v1/audio/voices", voices, methods=["GET"]),
    Route("/v1/personas/{name}/think", think, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
