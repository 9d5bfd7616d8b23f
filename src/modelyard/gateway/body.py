"""Reading a request's body within its limits: a size bound and an idle timeout.

Both hold while the body is read, chunked or not. The size is the access guard's: a
declared length over ``access.max_body`` is refused before the app, and an undeclared one
is read through ``LimitedReceive``, which raises BodyTooLarge as soon as it passes the
bound (nothing more is read or kept). ``read_body`` adds the idle bound: an upload that
stalls for ``access.body_timeout`` seconds is dropped rather than held open.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive

from modelyard.errors import BodyStalled, BodyTooLarge
from modelyard.gateway.errors import error_response

# On an answer sent before its body was read whole: uvicorn then closes the connection
# instead of reading (and dropping) the rest of the body.
CLOSE = {"Connection": "close"}


async def read_body(receive: Receive, idle: float) -> bytes:
    """The whole body; raises BodyStalled, ClientDisconnect, or BodyTooLarge (from the
    guard's ``LimitedReceive``).

    The idle bound is one timer that cancels this task, re-armed per part of the body
    (asyncio.timeout does the same with more bookkeeping: this runs for every request).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "called from a request's task"
    stalled = False

    def stall() -> None:
        nonlocal stalled
        stalled = True
        task.cancel()

    timer = loop.call_later(idle, stall)
    chunks: list[bytes] = []
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
            timer.cancel()
            timer = loop.call_later(idle, stall)
    except asyncio.CancelledError:
        if stalled and task.uncancel() == 0:
            raise BodyStalled(idle) from None
        raise
    finally:
        timer.cancel()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class LimitedReceive:
    """``receive`` that raises BodyTooLarge once more than ``limit`` body bytes came.

    For bodies of undeclared length (chunked); a declared one is checked before the app.
    """

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive, self.limit, self.size = receive, limit, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                raise BodyTooLarge(self.limit)
        return message


async def body_or_refusal(receive: Receive, idle: float) -> bytes | Response:
    """The whole body, or the answer that says why not: 413 over the size bound, 408
    stalled (both closing the connection: the rest is not read), 499 the client gone."""
    try:
        return await read_body(receive, idle)
    except (BodyTooLarge, BodyStalled) as exc:
        status = 413 if isinstance(exc, BodyTooLarge) else 408
        return error_response(status, str(exc), headers=dict(CLOSE))
    except ClientDisconnect:
        return Response(status_code=499)
