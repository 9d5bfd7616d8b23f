"""OpenAI's audio uploads: ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``,
multipart forms.

The form goes upstream as it came (its bytes, its Content-Type with the boundary); only its
``model`` field is read here, to route it. ``POST /v1/audio/speech`` is JSON and takes the
chat path in :mod:`modelyard.gateway.openai`. The speech worker itself is a process of its
own (``engines.speech``): the gateway never imports ``modelyard.speech``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from modelyard.errors import Refusal
from modelyard.gateway import dispatch
from modelyard.gateway.attempt import rejected
from modelyard.gateway.connection import head_size
from modelyard.gateway.dispatch import Call
from modelyard.gateway.errors import openai_error
from modelyard.gateway.state import Gateway
from modelyard.openai_body import features
from modelyard.routing import Decision

PATHS = {"/audio/transcriptions": "transcriptions", "/audio/translations": "translations"}
# A malformed upload is the client's 400, not a line in the gateway's log for each one.
logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
_MAX_FIELD = 1024  # a model's name: longer is no name


def form_field(raw: bytes, content_type: str, name: str) -> str | None:
    """The text of the field ``name`` of a multipart/form-data body, or None (absent, not
    multipart, malformed, a file rather than a field, or over ``_MAX_FIELD`` bytes).

    python-multipart's streaming parser, with callbacks that keep only that field's bytes:
    the uploaded file goes by unbuffered."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return None
    wanted = f'name="{name}"'.encode().lower()
    header = bytearray()
    mine = False  # the part being read is the field
    value = bytearray()
    found: list[bytes] = []

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.extend(data[start:end])

    def on_header_end() -> None:
        nonlocal mine
        parts = [p.strip() for p in bytes(header).lower().split(b";")]
        if parts and parts[0].startswith(b"form-data"):
            mine = wanted in parts and not any(p.startswith(b"filename") for p in parts)
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if mine and len(value) <= _MAX_FIELD:
            value.extend(data[start:end])

    def on_part_end() -> None:
        nonlocal mine
        if mine and not found:
            found.append(bytes(value))
        mine = False
        value.clear()

    callbacks: Any = {
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(raw)
        parser.finalize()
    except FormParserError:  # malformed, or a boundary over its 256 bytes
        return None
    if not found or len(found[0]) > _MAX_FIELD:
        return None
    return found[0].decode("utf-8", "replace").strip()


def _as_sent(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """No edits: the form goes upstream as it came."""
    return body


async def transcribe(
    request: Request, gw: Gateway, path: str, raw: bytes, began: float, me: asyncio.Task[Any]
) -> Response:
    """A transcription or translation: routed by its form's ``model``, forwarded byte for
    byte."""
    key = request.scope.get("state", {}).get("api_key")
    content_type = request.headers.get("content-type", "")
    asked = form_field(raw, content_type, "model")
    if not asked:
        refusal = Refusal(
            None,
            "`model` is required: a multipart/form-data field naming one of: "
            + ", ".join(gw.config.names()),
            param="model",
            status=400,
        )
        rejected(gw, path, "", began, key.name if key else None, refusal)
        return openai_error(refusal)
    head = head_size(request.scope)
    body = {"model": asked}
    endpoint = PATHS[path]
    found = features(body, request.headers, gw.routing_headers, endpoint, *head)
    call = Call(
        path, endpoint, asked, body, raw, False, request.headers, found, _as_sent,
        key, began, me, content_type=content_type,
    )  # fmt: skip
    decision = dispatch.admit(gw, call, openai_error)
    if isinstance(decision, Response):
        return decision
    return await dispatch.run(gw, call, decision, openai_error)
