"""Keep-alive for streams: SSE comments while a streamed request waits for its model.

A streamed request whose model is loading or queued gets its 200 and ``: waiting`` comment
lines at once, so proxies, browsers and SDKs with idle timeouts do not drop it during a
long load. What follows is one comment naming the model, instance and node that serve it
(the response headers left before that was known), then the upstream stream as it comes;
an error found after that point can only be said as an SSE error event.

Whatever the waiting ends in, the answer being prepared is either relayed or given back
(``settle``): a place granted in the very moment the client leaves is never kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.responses import Response

from modelyard.gateway.proxy import ProxyStream

FIRST_AFTER = 1.0  # seconds a streamed request waits before the first comment
EVERY = 2.0  # seconds between comments
_ANNOUNCED = ("x-modelyard-model", "x-modelyard-instance", "x-modelyard-node")


async def stream_or_wait(serving: asyncio.Task[Response], headers: dict[str, str]) -> Response:
    """``serving``'s answer if it comes soon, else a stream that waits for it out loud."""
    try:
        await asyncio.wait({serving}, timeout=FIRST_AFTER)
    except asyncio.CancelledError:
        settle(serving)
        raise
    if serving.done():
        return serving.result()
    return ProxyStream(
        _waiting(serving),
        lambda: settle(serving),
        media_type="text/event-stream",
        headers=headers,
    )


def settle(serving: asyncio.Task[Response]) -> None:
    """Nobody will send ``serving``'s answer: stop it, and give back what it returns.

    Not awaited (the caller may itself be cancelled): a stream the task still returns,
    now or after its cancel lands, is abandoned by the done callback.
    """
    if not serving.done():
        serving.cancel()
    serving.add_done_callback(_abandon_unsent)


def _abandon_unsent(serving: asyncio.Task[Response]) -> None:
    if serving.cancelled() or serving.exception() is not None:
        return  # nothing to give back (the exception is retrieved, so never logged as lost)
    answer = serving.result()
    if isinstance(answer, ProxyStream):
        answer.abandon()  # a no-op for one already relayed


async def _waiting(serving: asyncio.Task[Response]) -> AsyncIterator[bytes]:
    while not serving.done():
        yield b": modelyard: waiting for the model (loading or queued)\n\n"
        await asyncio.wait({serving}, timeout=EVERY)
    answer = serving.result()
    if isinstance(answer, ProxyStream):
        named = [f"{k.removeprefix('x-modelyard-')}={answer.headers[k]}" for k in _ANNOUNCED
                 if k in answer.headers]  # fmt: skip
        yield f": modelyard: {' '.join(named)}\n\n".encode()
        async with contextlib.aclosing(answer.chunks()) as chunks:
            async for chunk in chunks:
                yield chunk
    else:  # refused, or a plain answer: the 200 is already sent, so it goes as an event
        yield b"data: " + bytes(answer.body) + b"\n\n"
