"""Errors in the OpenAI shape, so every SDK shows the message as it is."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with the given HTTP status."""
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error(message: str, code: str = "upstream_error") -> bytes:
    """An error event that ends a stream that already started (no content is repeated)."""
    payload = orjson.dumps({"error": {"message": message, "type": "upstream_error", "code": code}})
    return b"data: " + payload + b"\n\n"
