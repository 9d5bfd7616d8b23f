"""The OpenAI lane: chat, completions and embeddings served without Starlette's layers.

These POST endpoints carry nearly all of a gateway's traffic. Around a handler, Starlette
adds an error middleware, an exception middleware, the router's matching, the
request-response wrapper and a wrapper on every ``send`` (each chunk of a stream): about
100k of the 565k instructions a bare pass-through spends on a request (valgrind, see
docs/benchmarks.md). The lane matches these paths itself and does what those layers
would do for them: a handler's unexpected exception becomes a logged 500. Every other
path, and any other method on these paths (405), goes to the Starlette app; so does a path
with parameters (``/v1/personas/{name}/think``), which only the router can match.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelyard.gateway.errors import error_response

Endpoint = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("modelyard.gateway")


class OpenAILane:
    """Serves ``endpoints`` (path → handler, POST only) directly; the rest goes to ``app``."""

    def __init__(self, app: Starlette, endpoints: Mapping[str, Endpoint]) -> None:
        self.app = app
        # Exact paths only: a pattern's text ("{name}") is no path a request has.
        self.endpoints = {p: e for p, e in endpoints.items() if "{" not in p}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            endpoint = self.endpoints.get(path[len(root) :] if path.startswith(root) else path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # handlers find the gateway at request.app.state
        try:
            response = await endpoint(Request(scope, receive, send))
        except Exception:
            log.exception("unexpected error serving POST %s", scope["path"])
            response = error_response(500, "the gateway failed on this request; its log says why")
        await response(scope, receive, send)
