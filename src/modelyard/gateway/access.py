"""Access: API keys with scopes and rate limits, and a cap on request bodies (ASGI middleware).

With no keys in the config the gateway is open (the CLI refuses to bind a non-loopback
address that way unless ``access.allow_open_lan`` says so). With keys, every route but
``/health`` and ``/ready`` needs ``Authorization: Bearer KEY`` (or ``x-api-key``); the
OpenAI API needs the ``user`` scope, ``/admin`` and ``/metrics`` the ``admin`` scope. Keys
are compared by their SHA-256, the only form kept.
"""

from __future__ import annotations

import hashlib
import math
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.config import Access, ApiKey
from modelyard.errors import Code, Refusal
from modelyard.gateway.body import CLOSE, LimitedReceive
from modelyard.gateway.errors import error_response, openai_error

OPEN_PATHS = ("/health", "/ready")


class AccessGuard:
    """Checks the key, its scope and its rate, and the body's declared size, before the app."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.max_body = access.max_body
        self.keys = {key.digest(): key for key in access.keys}
        self._buckets: dict[str, tuple[float, float]] = {}  # key name → (tokens, at)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in OPEN_PATHS and not scope["query_string"]):
            await self.app(scope, receive, send)  # asking for a model by name needs a key
            return
        length = _content_length(scope)
        if length is None:  # chunked, or no body: bounded while it is read
            receive = LimitedReceive(receive, self.max_body)
        elif length.isdigit() and int(length) > self.max_body:
            refusal = error_response(
                413,
                f"the body is {int(length)} bytes; this gateway takes at most {self.max_body} "
                "(access.max_body)",
                headers=dict(CLOSE),
            )
            await refusal(scope, receive, send)
            return
        if self.keys:
            key, denied = self._check(scope["path"], _headers(scope))
            if denied is not None:
                await denied(scope, receive, send)
                return
            scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    def _check(
        self, path: str, headers: dict[str, str]
    ) -> tuple[ApiKey | None, JSONResponse | None]:
        given = headers.get("authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else ""
        token = token or headers.get("x-api-key", "")
        if not token:
            needed = "an API key is needed: Authorization: Bearer KEY"
            return None, openai_error(Refusal(Code.MISSING_API_KEY, needed))
        key = self.keys.get(hashlib.sha256(token.encode()).hexdigest())
        if key is None:
            return None, openai_error(Refusal(Code.INVALID_API_KEY, "this API key is not known"))
        need = "admin" if path.startswith(("/admin", "/metrics")) else "user"
        if need not in key.scopes:
            lacks = f"API key {key.name!r} lacks the {need!r} scope needed for {path}"
            return key, openai_error(Refusal(Code.INSUFFICIENT_SCOPE, lacks))
        wait = self._spend(key)
        if wait > 0:
            over = f"API key {key.name!r} is over its rate of {key.rate:g} requests/s"
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            return key, openai_error(Refusal(Code.RATE_LIMITED, over, headers=retry))
        return key, None

    def _spend(self, key: ApiKey) -> float:
        """Token bucket of one second's worth (at least one): seconds until the next token."""
        if key.rate is None:
            return 0.0
        now = time.monotonic()
        capacity = max(1.0, key.rate)
        tokens, at = self._buckets.get(key.name, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * key.rate)
        if tokens < 1:
            self._buckets[key.name] = (tokens, now)
            return (1 - tokens) / key.rate
        self._buckets[key.name] = (tokens - 1, now)
        return 0.0


def may_use(key: ApiKey | None, asked: str, canonical: str | None) -> bool:
    """Whether ``key`` may ask for ``asked`` (``canonical``: the model it resolves to)."""
    if key is None or key.models is None:
        return True
    return asked in key.models or (canonical is not None and canonical in key.models)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _content_length(scope: Scope) -> str | None:
    """The declared body size, without decoding every header."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1"))
    return None
