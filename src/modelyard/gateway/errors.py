"""Errors in the OpenAI shape, so every SDK shows the message as it is.

The codes, their statuses and the exceptions are :mod:`modelyard.errors`; this module
renders them. An engine's own error answer is put in this shape too (``from_upstream``): its
4xx stays a 4xx with its message and code (a free string), its 5xx becomes the gateway's 502
naming the model that failed. SDKs retry 5xx answers, so a client's mistake must never reach
them as one.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from modelyard.errors import Code, Refusal, UpstreamFailed, status_of

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def openai_error(refusal: Refusal) -> JSONResponse:
    """``refusal`` in the OpenAI error shape."""
    headers = dict(refusal.headers) if refusal.headers else None
    return error_response(
        refusal.status, refusal.message, code=refusal.code, param=refusal.param, headers=headers
    )


def error_type(status: int) -> str:
    """The OpenAI ``error.type`` for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object; ``code`` a :class:`Code`, or an engine's own as it came."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    code: Code | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with the given HTTP status."""
    return JSONResponse(
        error_body(status, message, code, param), status_code=status, headers=headers
    )


def sse_error(message: str, code: Code = Code.UPSTREAM_ERROR) -> bytes:
    """An error event that ends a stream that already started (no content is repeated)."""
    payload = orjson.dumps({"error": {"message": message, "type": "upstream_error", "code": code}})
    return b"data: " + payload + b"\n\n"


def from_upstream(status: int, body: bytes, model: str) -> tuple[int, bytes]:
    """An engine's error answer as the status and OpenAI-shaped body the client gets.

    A 4xx keeps its status and message (the client can fix its request); 501 (an endpoint
    the server does not serve) is the client's too, a 400. Any other 5xx raises
    UpstreamFailed: the caller tries another candidate or answers 502 naming ``model``.
    """
    message, code, param = _what_it_said(body)
    if status >= 500 and status != 501:
        raise UpstreamFailed(f"{model} failed ({status}): {message}")
    if status == 501:
        code = code or Code.UNSUPPORTED_ENDPOINT
        status = status_of(Code.UNSUPPORTED_ENDPOINT)
        message = f"{model} does not serve this endpoint: {message}"
    return status, orjson.dumps(error_body(status, message, code, param))


def _what_it_said(body: bytes) -> tuple[str, str | None, str | None]:
    """Message, code and param from any of the error shapes engines use, else the text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error", data.get("detail")) if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = error.get("message", error.get("msg"))
        code, param = error.get("code"), error.get("param")
        return (
            str(message)[:2000] if message is not None else _text(body),
            code if isinstance(code, str) else None,  # llama-server's is the status again
            param if isinstance(param, str) else None,
        )
    if isinstance(error, str):
        return error[:2000], None, None
    return _text(body), None, None


def _text(body: bytes) -> str:
    text = body[:2000].decode("utf-8", "replace").strip()
    return text or "(no message)"
