"""The OpenAI Responses front-end: ``POST /v1/responses`` (Codex, the ``openai`` SDK's
``responses.create``), on the same port and the one request path.

Like the Anthropic front-end: checked and read for routing, policy and admission as it
came (``responses_body.read``); passed as it came to an engine that speaks Responses itself
(llama-server, vLLM; ``models.NAME.protocols``), else translated
(``responses_body.translate``, made only then) and its answer made a Responses answer as it
streams (``responses_stream.ResponsesAnswer``);
``x-modelyard-protocol`` says which. Tools of the built-in kinds (web search, file search,
computer use, ...) are declined, not failed: the engine gets the function tools only, and
``x-modelyard-declined-tools`` names what was left out (openai/codex #10635).
``previous_response_id`` needs an engine that keeps responses: refused for a translated one.
Errors are in OpenAI's shape, as the Responses API's are.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.errors import Code, Refusal
from modelyard.gateway import dispatch
from modelyard.gateway.connection import head_size
from modelyard.gateway.dispatch import Call, Native
from modelyard.gateway.errors import openai_error
from modelyard.gateway.frontend import json_request, refused, until_gone
from modelyard.gateway.state import Gateway
from modelyard.openai_body import apply_edits, features
from modelyard.responses_body import declined_tools, read, translate
from modelyard.responses_stream import ResponsesAnswer

PATH = "/responses"
LAST_EVENT = b"response.completed"


async def responses(request: Request) -> Response:
    """``POST /v1/responses``."""

    def serve(gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any]) -> Any:
        return _serve(request, gw, raw, began, me)

    return await until_gone(request, PATH, serve, openai_error)


async def _serve(
    request: Request, gw: Gateway, raw: bytes, began: float, me: asyncio.Task[Any]
) -> Response:
    key = request.scope.get("state", {}).get("api_key")
    parsed = json_request(gw, PATH, raw, began, key, openai_error)
    if isinstance(parsed, Response):
        return parsed
    body, asked = parsed
    said = read(body)  # every check; translated only if a hop needs it
    if isinstance(said, tuple):
        problem = Refusal(Code.INVALID_REQUEST, said[0], param=said[1])
        return refused(gw, PATH, began, key, problem, openai_error)
    stream = body.get("stream") is True
    head = head_size(request.scope)
    found = features(body, request.headers, gw.routing_headers, "chat", *head, text=said)
    call = Call(
        "/chat/completions", "chat", asked, body, None, stream, request.headers, found,
        apply_edits, key, began, me,
        native=Native("responses", PATH, raw, LAST_EVENT, lambda: translate(body)),
        translate=lambda: ResponsesAnswer(asked, body),
    )  # fmt: skip
    decision = dispatch.admit(gw, call, openai_error)
    if isinstance(decision, Response):
        return decision
    if body.get("previous_response_id") is not None:
        target = dispatch.first_model(gw, decision)
        if target is None or "responses" not in target.speaks:
            why = (
                f"`previous_response_id` needs an engine that keeps responses; "
                f"{decision.model} gets this request translated onto Chat Completions and "
                "keeps none: send the whole conversation in `input`"
            )
            refusal = Refusal(Code.INVALID_REQUEST, why, param="previous_response_id")
            return dispatch.refuse(gw, call, refusal, openai_error)
    answer = await dispatch.run(gw, call, decision, openai_error)
    declined = declined_tools(body)
    if declined and answer.headers.get("x-modelyard-protocol", "").endswith("translated"):
        answer.headers["x-modelyard-declined-tools"] = ", ".join(declined)
    return answer


routes = [Route("/v1/responses", responses, methods=["POST"])]
