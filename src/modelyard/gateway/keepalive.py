"""Keep-alive for streams: SSE comments while a streamed request waits for its model.

A streamed request whose model is loading or queued gets its 200 and ``: waiting`` comment
lines at once, so proxies, browsers and SDKs with idle timeouts do not drop it during a
long load. What follows is the upstream stream as it comes; an error found after that
point can only be said as an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from modelyard.gateway.proxy import ProxyStream

FIRST_AFTER = 1.0  # seconds a streamed request waits before the first comment
EVERY = 2.0  # seconds between comments


async def stream_or_wait(serving: asyncio.Task[Response], headers: dict[str, str]) -> Response:
    """``serving``'s answer if it comes soon, else a stream that waits for it out loud."""
    try:
        await asyncio.wait({serving}, timeout=FIRST_AFTER)
    except asyncio.CancelledError:
        serving.cancel()
        raise
    if serving.done():
        return serving.result()
    return StreamingResponse(_waiting(serving), media_type="text/event-stream", headers=headers)


async def _waiting(serving: asyncio.Task[Response]) -> AsyncIterator[bytes]:
    relayed = False
    try:
        while not serving.done():
            yield b": modelyard: waiting for the model (loading or queued)\n\n"
            await asyncio.wait({serving}, timeout=EVERY)
        answer = serving.result()
        if isinstance(answer, ProxyStream):
            relayed = True
            async for chunk in answer.chunks():
                yield chunk
        else:  # refused, or a plain answer: the 200 is already sent, so it goes as an event
            yield b"data: " + bytes(answer.body) + b"\n\n"
    finally:
        if not serving.done():
            serving.cancel()  # the client left while waiting: its place and slot go back
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        elif not relayed and not serving.cancelled() and serving.exception() is None:
            answer = serving.result()
            if isinstance(answer, ProxyStream):
                answer.abandon()  # granted as the client left: give it all back
