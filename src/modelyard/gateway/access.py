"""Access: API keys with scopes and rate limits, and a cap on request bodies (ASGI middleware).

With no keys in the config the gateway is open (the CLI refuses to bind a non-loopback
address that way unless ``access.allow_open_lan`` says so). With keys, every route but
``/health`` and ``/ready`` needs ``Authorization: Bearer KEY`` (or ``x-api-key``); the
OpenAI API needs the ``user`` scope; ``/admin``, ``/metrics`` and ``/upstream`` the ``admin``
scope. Keys are compared by their SHA-256, the only form kept.

The web console signs in once (``gateway/session.py``): a request with neither header but
the ``modelyard_session`` cookie of a live session is that session's key. A cookie's
request that changes something (POST, PUT, PATCH, DELETE) must show it comes from the
gateway's own page (``session.cross_site``), else 403 ``cross_site_request``; with no keys,
a browser's request from another origin is refused the same way. The console's pages and
its sign-in and sign-out need no key.
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
from modelyard.gateway.connection import head_value
from modelyard.gateway.errors import error_response, openai_error
from modelyard.gateway.session import (
    SECURITY,
    UNSAFE,
    SessionStore,
    cross_site,
    is_public,
    session_token,
)

OPEN_PATHS = ("/health", "/ready")


class AccessGuard:
    """Checks the key, its scope and its rate, and the body's declared size, before the app."""

    def __init__(self, app: ASGIApp, access: Access, sessions: SessionStore | None = None) -> None:
        self.app = app
        self.sessions = sessions
        self.max_body = access.max_body
        self.keys = {key.digest(): key for key in access.keys}
        self._buckets: dict[str, tuple[float, float]] = {}  # key name → (tokens, at)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in OPEN_PATHS and not scope["query_string"]):
            await self.app(scope, receive, send)  # asking for a model by name needs a key
            return
        declared = head_value(scope, b"content-length")
        length = declared.decode("latin-1") if declared is not None else None
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
            if not is_public(scope["path"]):
                key, denied = self._check(scope, _headers(scope))
                if denied is not None:
                    if scope["path"].startswith("/console/"):  # the console's: its headers
                        denied.headers.update(SECURITY)
                    await denied(scope, receive, send)
                    return
                scope.setdefault("state", {})["api_key"] = key
        elif scope["method"] in UNSAFE and head_value(scope, b"origin", b"sec-fetch-site"):
            # Only browsers send those on their own: an SDK's or curl's request is never one.
            if cross_site(scope, _headers(scope), strict=False):
                await openai_error(_CROSS_SITE)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(
        self, scope: Scope, headers: dict[str, str]
    ) -> tuple[ApiKey | None, JSONResponse | None]:
        path: str = scope["path"]
        if self.sessions is not None and not ("authorization" in headers or "x-api-key" in headers):
            key, denied = self._by_session(scope, headers, self.sessions)
        else:
            key, denied = self._by_header(headers)
        if key is None or denied is not None:
            return key, denied
        need = "admin" if path.startswith(("/admin", "/metrics", "/upstream/")) else "user"
        if need not in key.scopes and path != "/console/me":  # any key may ask who it is
            lacks = f"API key {key.name!r} lacks the {need!r} scope needed for {path}"
            return key, openai_error(Refusal(Code.INSUFFICIENT_SCOPE, lacks))
        wait = self._spend(key)
        if wait > 0:
            over = f"API key {key.name!r} is over its rate of {key.rate:g} requests/s"
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            return key, openai_error(Refusal(Code.RATE_LIMITED, over, headers=retry))
        return key, None

    def _by_header(self, headers: dict[str, str]) -> tuple[ApiKey | None, JSONResponse | None]:
        given = headers.get("authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else ""
        token = token or headers.get("x-api-key", "")
        if not token:
            return None, openai_error(Refusal(Code.MISSING_API_KEY, _NEEDED))
        key = self.keys.get(hashlib.sha256(token.encode()).hexdigest())
        if key is None:
            return None, openai_error(Refusal(Code.INVALID_API_KEY, "this API key is not known"))
        return key, None

    def _by_session(
        self, scope: Scope, headers: dict[str, str], sessions: SessionStore
    ) -> tuple[ApiKey | None, JSONResponse | None]:
        token = session_token(scope["headers"])
        if token is None:
            return None, openai_error(Refusal(Code.MISSING_API_KEY, _NEEDED))
        key = sessions.key_of(token, self.keys)
        if key is None:
            gone = "the console session is not valid (signed out, expired or its key removed)"
            return None, openai_error(Refusal(Code.MISSING_API_KEY, gone + "; sign in again"))
        if scope["method"] in UNSAFE and cross_site(scope, headers):
            return key, openai_error(_CROSS_SITE)
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


_NEEDED = "an API key is needed: Authorization: Bearer KEY"
_CROSS_SITE = Refusal(
    Code.CROSS_SITE_REQUEST,
    "a request from another site's page: changes come only from the gateway's own page "
    "(its Origin, or Sec-Fetch-Site: same-origin)",
)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
