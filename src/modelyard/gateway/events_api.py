"""``GET /admin/events``: the event hub as Server-Sent Events.

``?kinds=instance,node,config,request`` picks kinds (default: all). Each event is
``id: SEQ``, ``event: KIND`` and ``data: JSON``; a reader that fell more than the buffer
behind gets ``event: lost`` with how many it missed (then reads ``/admin/status`` again);
a comment every 15 s keeps proxies from closing a quiet stream. A client that leaves,
or never reads, costs at most its buffer and is dropped from the hub when it goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelyard.events import KINDS, Subscription
from modelyard.gateway.errors import error_response
from modelyard.gateway.state import Gateway

QUIET = 15.0  # seconds of no event before a keep-alive comment


async def events(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    asked = request.query_params.get("kinds")
    kinds = [k.strip() for k in asked.split(",") if k.strip()] if asked else list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        return error_response(
            400,
            f"unknown event kind(s): {', '.join(unknown) or '(none given)'}; "
            f"kinds: {', '.join(KINDS)}, e.g. ?kinds=instance,request",
            param="kinds",
        )
    sub = gw.events.subscribe(kinds)
    return StreamingResponse(
        _sse(sub),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def model_events(request: Request) -> Response:
    """``GET /console/api/models/events``: the ``instance`` events alone, for any key: what
    a chat needs to show each model's state and a start's progress (``seconds`` expected)."""
    gw: Gateway = request.app.state.gateway
    return StreamingResponse(
        _sse(gw.events.subscribe(["instance"])),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _sse(sub: Subscription) -> AsyncIterator[bytes]:
    # Starlette runs this beside a task that watches for the client's disconnect and
    # cancels it: the subscription is then closed here, whatever the stream was doing.
    try:
        yield b": modelyard events\n\n"
        while True:
            event = await sub.next(QUIET)
            if event is None:
                yield b": keep-alive\n\n"
                continue
            data = orjson.dumps(event.as_dict(), default=str)
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.kind.encode(), data)
    finally:
        sub.close()
