"""A streamed request's answer is relayed or given back, whenever its client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.responses import Response

from modelyard.gateway.keepalive import stream_or_wait
from modelyard.gateway.proxy import ProxyStream


async def _chunks() -> AsyncIterator[bytes]:
    yield b"data: {}\n\n"


def _stream(closed: list[str]) -> ProxyStream:
    return ProxyStream(_chunks(), lambda: closed.append("closed"), media_type="text/event-stream")


async def _serving_that_finishes_anyway(gate: asyncio.Future[None], closed: list[str]) -> Response:
    """Serving that returns its stream even when cancelled in the turn it is granted (as a
    request did when Python 3.11's wait_for dropped a cancel that came with a grant)."""
    try:
        await gate
    except asyncio.CancelledError:
        pass
    return _stream(closed)


def test_a_stream_returned_as_the_client_leaves_before_the_first_comment_is_closed() -> None:
    async def scenario() -> list[str]:
        closed: list[str] = []
        gate = asyncio.get_running_loop().create_future()
        serving = asyncio.ensure_future(_serving_that_finishes_anyway(gate, closed))
        outer = asyncio.ensure_future(stream_or_wait(serving, {}))
        await asyncio.sleep(0.05)
        gate.set_result(None)  # granted ...
        outer.cancel()  # ... and the client gone, in the same turn
        await asyncio.gather(outer, return_exceptions=True)
        await asyncio.sleep(0.01)
        return closed

    assert asyncio.run(scenario()) == ["closed"]


def test_a_stream_returned_as_the_client_leaves_a_waiting_stream_is_closed() -> None:
    """The client got its 200 and waiting comments, then left just as the model came."""

    async def scenario() -> list[str]:
        closed: list[str] = []
        gate = asyncio.get_running_loop().create_future()
        serving = asyncio.ensure_future(_serving_that_finishes_anyway(gate, closed))
        waiting = await stream_or_wait(serving, {})  # past FIRST_AFTER: the waiting stream
        assert isinstance(waiting, ProxyStream)
        sent: list[bytes] = []

        async def send(message: dict[str, object]) -> None:
            if message.get("body"):
                sent.append(message["body"])  # type: ignore[arg-type]

        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()
            return {}

        relay = asyncio.ensure_future(waiting({"type": "http"}, receive, send))
        await asyncio.sleep(0.05)
        assert sent and sent[0].startswith(b": modelyard: waiting")
        gate.set_result(None)
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await asyncio.sleep(0.01)
        return closed

    assert asyncio.run(scenario()) == ["closed"]


def test_a_waiting_stream_names_the_model_that_serves_it() -> None:
    async def scenario() -> bytes:
        closed: list[str] = []

        async def serving() -> Response:
            await asyncio.sleep(1.2)
            stream = _stream(closed)
            stream.headers["x-modelyard-model"] = "gemma-a"
            stream.headers["x-modelyard-instance"] = "gemma-a#3"
            stream.headers["x-modelyard-node"] = "local"
            return stream

        waiting = await stream_or_wait(asyncio.ensure_future(serving()), {})
        sent: list[bytes] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message.get("body", b""))  # type: ignore[arg-type]

        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()
            return {}

        await waiting({"type": "http"}, receive, send)
        assert closed == ["closed"]
        return b"".join(sent)

    body = asyncio.run(scenario())
    assert b": modelyard: model=gemma-a instance=gemma-a#3 node=local\n\n" in body
    assert body.endswith(b"data: {}\n\n")
