"""Errors in one place: the codes the gateway answers with, and the exceptions it raises.

``ERRORS`` gives each :class:`Code` its HTTP status and what it means; docs/faults.md lists
the same table (``tests/unit/test_errors.py`` keeps the two equal). A code is sent with its
own status, except where its meaning says otherwise (``model_unavailable`` is also a full
queue's 429 and a broken server's 502; ``start_failed`` takes the start's refusal status):
those few places pass ``status=`` themselves. An engine's own error codes are free strings
and pass through as they came (``gateway.errors.from_upstream``).

Errors with no code (``code: null``: a body that is not JSON, one over ``access.max_body``,
a bad admin query) are answered with a status alone, as they always were.

Pure: the core raises these too, so this module imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Code(StrEnum):
    """Every ``error.code`` the gateway itself answers with."""

    # The connection: a request's head (gateway/connection.py)
    INVALID_HTTP = "invalid_http"
    HEADERS_TOO_LARGE = "headers_too_large"
    HEADER_TIMEOUT = "header_timeout"
    # Access: keys, scopes and rates (gateway/access.py)
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    RATE_LIMITED = "rate_limited"
    CROSS_SITE_REQUEST = "cross_site_request"
    # The request (gateway/openai.py, gateway/dispatch.py)
    BODY_TIMEOUT = "body_timeout"
    INVALID_REQUEST = "invalid_request"
    MODEL_NOT_FOUND = "model_not_found"
    PERSONA_NOT_FOUND = "persona_not_found"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    NO_ROUTE = "no_route"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    UNSUPPORTED_ENDPOINT = "unsupported_endpoint"
    # Serving it (the scheduler's refusals, the upstream's failures)
    SWAP_REFUSED = "swap_refused"
    MODEL_UNAVAILABLE = "model_unavailable"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"
    # The management API (gateway/admin.py, agent.py)
    START_FAILED = "start_failed"
    NODE_UNREACHABLE = "node_unreachable"
    INVALID_CONFIG = "invalid_config"
    RESTART_NEEDED = "restart_needed"
    # The console's conversations (conversations.py, gateway/conversations_api.py)
    CONVERSATION_NOT_FOUND = "conversation_not_found"
    CONVERSATION_LIMIT = "conversation_limit"


# code → (HTTP status, what it means). docs/faults.md ("Error codes") lists the same rows.
ERRORS: Mapping[Code, tuple[int, str]] = MappingProxyType(
    {
        Code.INVALID_HTTP: (400, "the request is not valid HTTP/1.1; the connection is closed"),
        Code.HEADERS_TOO_LARGE: (
            431,
            "more headers, or header bytes, than `access.max_headers` or "
            "`access.max_header_bytes`; the connection is closed",
        ),
        Code.HEADER_TIMEOUT: (
            408,
            "the headers did not arrive within `access.header_timeout`; the connection is closed",
        ),
        Code.MISSING_API_KEY: (
            401,
            "keys are set and the request has none (`Authorization: Bearer KEY`, `x-api-key`)",
        ),
        Code.INVALID_API_KEY: (401, "the API key is not one of `access.keys`"),
        Code.INSUFFICIENT_SCOPE: (
            403,
            "the key lacks the scope the path needs: `user`, or `admin` for `/admin`, `/metrics`",
        ),
        Code.RATE_LIMITED: (429, "the key is over its `rate`; `Retry-After` says when to retry"),
        Code.CROSS_SITE_REQUEST: (
            403,
            "a browser's request that changes something (POST, PUT, PATCH, DELETE) is not "
            "from the gateway's own page: `Origin` differs; a console session's request "
            "without `Origin` needs `Sec-Fetch-Site: same-origin`",
        ),
        Code.BODY_TIMEOUT: (
            408,
            "the body stopped arriving for `access.body_timeout`; the connection is closed",
        ),
        Code.INVALID_REQUEST: (400, "the body is not what the endpoint takes; `param` names it"),
        Code.MODEL_NOT_FOUND: (
            404,
            "no model, alias or tier has the name; the known ones are listed",
        ),
        Code.PERSONA_NOT_FOUND: (
            404,
            "`/v1/personas/NAME/think` names no persona of the config; the known ones are listed",
        ),
        Code.MODEL_NOT_ALLOWED: (403, "the key's `models` do not include the one asked for"),
        Code.NO_ROUTE: (400, "`auto` was asked for and no policy rule with `use` holds"),
        Code.CONTEXT_LENGTH_EXCEEDED: (400, "the prompt is too long for every candidate's window"),
        Code.UNSUPPORTED_ENDPOINT: (
            400,
            "no candidate serves the endpoint (`models.NAME.serves`, or the engine's own 501)",
        ),
        Code.SWAP_REFUSED: (
            409,
            "the model is not loaded and may not load now: the swap is refused "
            "(`x-modelyard-no-swap`, a pinned model) or it may not start there",
        ),
        Code.MODEL_UNAVAILABLE: (
            503,
            "no candidate can serve now (failed, loading, node drained or gated, no room); "
            "429 when a ready model's queue is full, 502 when its server broke before answering",
        ),
        Code.TIMEOUT: (
            504,
            "a timeout (`timeouts.*`) or the client's deadline passed before the answer; "
            "in a stream, its error event",
        ),
        Code.UPSTREAM_ERROR: (
            502,
            "the server failed mid-stream: an error event ends the stream (its 200 went out)",
        ),
        Code.START_FAILED: (
            503,
            "a start (admin `start`, `restart`, or a node's agent) did not bring the model up; "
            "409 when its swap is refused",
        ),
        Code.NODE_UNREACHABLE: (503, "the node's agent does not answer"),
        Code.INVALID_CONFIG: (400, "a reloaded config did not validate; the running one stays"),
        Code.RESTART_NEEDED: (
            409,
            "a reloaded config changes what only a restart applies; the running one stays",
        ),
        Code.CONVERSATION_NOT_FOUND: (
            404,
            "the key has no conversation of that id (another key's is not found either)",
        ),
        Code.CONVERSATION_LIMIT: (
            409,
            "the key keeps the most conversations allowed, or the conversation the most "
            "messages; delete some first",
        ),
    }
)


def status_of(code: Code) -> int:
    """The HTTP status ``code`` is answered with."""
    return ERRORS[code][0]


@dataclass(frozen=True)
class Refusal:
    """An error for the client in no protocol's shape: each front-end renders it in its own
    (``gateway.errors.openai_error``). ``code`` is a stable machine-readable word, ``param``
    the request field at fault.

    ``status`` is the code's own (``ERRORS``) unless given: for one of the few answers whose
    status is not its code's (see the module's doc), and for an error with no code.
    """

    code: Code | None
    message: str
    param: str | None = None
    headers: Mapping[str, str] | None = None
    status: int = 0  # 0: the code's own

    def __post_init__(self) -> None:
        if not self.status:
            if self.code is None:
                raise ValueError("a refusal with no code needs its status")
            object.__setattr__(self, "status", status_of(self.code))


class Refused(Exception):
    """A request the scheduler will not serve now: ``code`` says why, ``status`` is the HTTP
    status to answer (the code's own unless given: a ready model's full queue is a 429)."""

    def __init__(
        self,
        code: Code,
        reason: str,
        retry_after: float | None = None,
        timed_out: bool = False,
        *,
        status: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.status = status_of(code) if status is None else status
        self.reason = reason
        self.retry_after = retry_after
        self.timed_out = timed_out  # the wait ran out, nothing refused it


NOTE = "[modelyard "  # how modelyard's own lines in an engine log begin


class StartError(Exception):
    """An instance failed to start: ``str()`` says why, ``tail`` has the engine's last lines."""

    def __init__(self, reason: str, tail: list[str] | None = None) -> None:
        engine_lines = (ln for ln in reversed(tail or []) if ln.strip() and not ln.startswith(NOTE))
        last = next(engine_lines, None)
        super().__init__(f"{reason}; last output: {last.strip()}" if last else reason)
        self.tail = tail or []


class UpstreamFailed(Exception):
    """An engine answered with a server error: ``str()`` says which model and what it said."""


class UpstreamUnavailable(Exception):
    """The upstream failed before the client got a byte: the next candidate may serve.

    ``code`` and ``status`` are what the client gets if no other candidate serves:
    ``timeout`` (504) for a server that is too slow; ``model_unavailable`` answered 502 for
    one that does not answer or breaks (a bad gateway, not a model that cannot serve now).
    """

    def __init__(self, message: str, code: Code = Code.MODEL_UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code
        self.status = 502 if code is Code.MODEL_UNAVAILABLE else status_of(code)


class BodyTooLarge(Exception):
    """The body passed ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is over {limit} bytes, the most this gateway takes "
                         "(access.max_body)")  # fmt: skip
        self.limit = limit


class BodyStalled(Exception):
    """No part of the body came for ``idle`` seconds."""

    def __init__(self, idle: float) -> None:
        super().__init__(f"the body stopped arriving: nothing for {idle:g}s "
                         "(access.body_timeout)")  # fmt: skip


class ReloadRefused(Exception):
    """A new config that cannot be applied to a running gateway."""


class AgentError(Exception):
    """A node's agent answered with an error (``status``), or did not answer (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
