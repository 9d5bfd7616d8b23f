"""forward with any request type, and answers that are neither JSON nor events (audio).

The upstream is an aiohttp server in this process; the answers are driven as ASGI apps
with hand-made ``send`` or through ``chunks()``. Events, not sleeps, order each scenario:
an answer forward would read whole blocks on a gate only the test opens.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from starlette.responses import Response

from modelyard.engines.base import Upstream
from modelyard.gateway.proxy import ProxyStream, Result, UpstreamClient, forward, new_client
from modelyard.gateway.timeouts import Limits

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # generous: only a broken proxy waits this long
CHUNK = 64 * 1024
LARGE = random.Random(7).randbytes(20 * 1024 * 1024)
MULTIPART = (
    b"--XyZzy\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\n'
    b"whisper\r\n"
    b"--XyZzy\r\n"
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\n"
    b"RIFF\x00\x01\xff\xfe\r\n--Xy\x00binary\r\n"
    b"--XyZzy--\r\n"
)


@dataclass
class Stub:
    """What the upstream saw and the gates it waits on."""

    base_url: str = ""
    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # a handler saw its client leave


def _app(up: Stub) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        up.bodies.append((request.headers["Content-Type"], await request.read()))
        up.peers.append(request.transport and request.transport.get_extra_info("peername"))
        return web.Response(body=b'{"text":"hello"}', content_type="application/json")

    async def json_usage(request: web.Request) -> web.Response:
        await request.read()
        answer = {
            "model": "upstream-name",
            "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5},
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def error_text(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400, text="no such voice", content_type="text/plain")

    async def prepared(request: web.Request, kind: str, length: int | None = None) -> Any:
        await request.read()
        up.peers.append(request.transport and request.transport.get_extra_info("peername"))
        resp = web.StreamResponse(headers={"Content-Type": kind})
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        return resp

    async def gated(request: web.Request) -> web.StreamResponse:
        resp = await prepared(request, "audio/wav")
        await resp.write(b"first")
        await up.gate.wait()  # opened by the test only once the first chunk reached it
        await resp.write(b"last")
        await resp.write_eof()
        return resp

    async def large(request: web.Request) -> web.StreamResponse:
        resp = await prepared(request, "audio/mpeg", len(LARGE))
        for at in range(0, len(LARGE), CHUNK):
            await resp.write(LARGE[at : at + CHUNK])
        await resp.write_eof()
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        # Sends a chunk, then waits: for the test's gate (a slow model) or to be cut.
        resp = await prepared(request, "application/octet-stream")
        try:
            await resp.write(b"first")
            await asyncio.Event().wait()  # silent until the proxy hangs up
        except BaseException:
            up.gone.set()
            raise
        return resp

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = await prepared(request, "audio/wav", 1000)
        await resp.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()  # 900 bytes short of what it announced
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        resp = await prepared(request, "text/event-stream")
        try:
            await resp.write(b'data: {"choices":[]}\n\n')
            await asyncio.Event().wait()
        except BaseException:
            up.gone.set()
            raise
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    for path, handler in [
        ("/echo", echo),
        ("/json", json_usage),
        ("/error", error_text),
        ("/gated", gated),
        ("/large", large),
        ("/endless", endless),
        ("/broken", broken),
        ("/events", events),
    ]:
        app.router.add_post(path, handler)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Stub]:
    up = Stub()
    # handler_cancellation: a handler learns that the proxy closed its connection.
    runner = web.AppRunner(_app(up), handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    up.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield up
    finally:
        up.gate.set()
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = new_client()
    try:
        yield c
    finally:
        await c.close()


class Done:
    def __init__(self) -> None:
        self.results: list[Result] = []

    def __call__(self, result: Result) -> None:
        self.results.append(result)

    @property
    def only(self) -> Result:
        assert len(self.results) == 1, self.results
        return self.results[0]


async def _forward(
    client: UpstreamClient,
    up: Stub,
    path: str,
    done: Done,
    *,
    body: bytes = b"{}",
    idle: float = WAIT,
    stream: bool = False,
    model: str | None = None,
    **kwargs: Any,
) -> Response:
    limits = Limits(connect=WAIT, first_byte=WAIT, idle=idle)
    return await asyncio.wait_for(
        forward(
            client,
            Upstream(base_url=up.base_url, model=model),
            path,
            body,
            stream=stream,
            asked_model="asked",
            headers={"x-modelyard-model": "asked"},
            limits=limits,
            done=done,
            **kwargs,
        ),
        WAIT,  # a forward that reads a gated answer whole would wait here, and fail
    )


class Sent:
    """A hand-made ASGI ``send``: the messages, and an event per body chunk."""

    def __init__(self, on_body: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.body = bytearray()
        self.first = asyncio.Event()
        self.on_body = on_body

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.body += message["body"]
            self.first.set()
            if self.on_body is not None:
                await self.on_body(message["body"])

    @property
    def completed(self) -> bool:
        last = self.messages[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def _serve(answer: Response, sent: Sent) -> None:
    await asyncio.wait_for(answer({"type": "http"}, _never, sent), WAIT)


async def test_a_multipart_body_reaches_the_upstream_unchanged_with_its_type(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    kind = "multipart/form-data; boundary=XyZzy"
    answer = await _forward(client, upstream, "/echo", done, body=MULTIPART, content_type=kind)
    assert upstream.bodies == [(kind, MULTIPART)]
    assert not isinstance(answer, ProxyStream)  # its JSON answer is read whole, as before
    assert answer.body == b'{"text":"hello"}'
    assert done.only.status == 200


async def test_a_binary_answer_starts_before_the_upstream_finishes_it(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/gated", done)
    assert isinstance(answer, ProxyStream)
    assert answer.headers["content-type"] == "audio/wav"
    got = []
    async with asyncio.timeout(WAIT):
        async for chunk in answer.chunks():
            got.append(chunk)
            upstream.gate.set()  # the rest comes only once the first chunk got here
    assert got[0] == b"first"
    assert b"".join(got) == b"firstlast"
    assert done.only.status == 200 and done.only.error is None


async def test_a_large_binary_answer_arrives_whole_and_its_connection_is_reused(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/large", done)
    assert isinstance(answer, ProxyStream)
    assert answer.headers["content-length"] == str(len(LARGE))  # a cut shows to the client
    sent = Sent()
    await _serve(answer, sent)
    assert sent.completed
    assert len(sent.body) == len(LARGE) and bytes(sent.body) == LARGE
    assert done.only.status == 200 and done.only.error is None
    assert done.only.tokens_in is None and done.only.tokens_out is None
    # Released to the pool: the next request goes on the same connection.
    await _forward(client, upstream, "/echo", Done())
    assert upstream.peers[0] == upstream.peers[1]


@pytest.mark.parametrize("how", ["abandon", "chunks", "asgi"])
async def test_a_client_that_leaves_a_binary_answer_closes_the_upstream(
    upstream: Stub, client: UpstreamClient, how: str
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/endless", done)
    assert isinstance(answer, ProxyStream)
    if how == "abandon":  # never relayed (its client left before the answer began)
        answer.abandon()
    elif how == "chunks":
        chunks = answer.chunks()
        assert await chunks.__anext__() == b"first"
        await chunks.aclose()
    else:  # the request's watch cancels the ASGI task when the client leaves
        sent = Sent()
        relay = asyncio.ensure_future(answer({"type": "http"}, _never, sent))
        await asyncio.wait_for(sent.first.wait(), WAIT)
        assert bytes(sent.body) == b"first"
        relay.cancel()
        with pytest.raises(asyncio.CancelledError):
            await relay
    assert done.only.status == 499
    await asyncio.wait_for(upstream.gone.wait(), WAIT)  # the upstream saw its client go
    answer.abandon()
    assert len(done.results) == 1


async def test_a_silent_binary_answer_is_cut_without_an_error_event(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/endless", done, idle=0.3)
    sent = Sent()
    await _serve(answer, sent)
    assert bytes(sent.body) == b"first"  # nothing appended: no SSE in the audio
    assert not sent.completed  # left incomplete: the server drops the connection
    assert done.only.status == 504
    assert "timeouts.idle" in (done.only.error or "")
    await asyncio.wait_for(upstream.gone.wait(), WAIT)


async def test_a_binary_answer_broken_mid_way_is_cut_with_502(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/broken", done)
    assert answer.headers["content-length"] == "1000"
    sent = Sent()
    await _serve(answer, sent)
    assert bytes(sent.body) == b"x" * 100
    assert not sent.completed
    assert done.only.status == 502
    assert "failed mid-stream" in (done.only.error or "")


async def test_a_silent_event_stream_still_ends_with_an_error_event(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/events", done, idle=0.3, stream=True)
    sent = Sent()
    await _serve(answer, sent)
    assert bytes(sent.body).startswith(b'data: {"choices":[]}\n\n')
    assert b'"code":"timeout"' in sent.body and sent.completed
    assert done.only.status == 504


async def test_a_json_answer_is_still_read_whole_renamed_and_counted(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/json", done, model="upstream-name")
    assert not isinstance(answer, ProxyStream)
    assert b'"model":"asked"' in answer.body
    assert answer.headers["content-length"] == str(len(answer.body))
    result = done.only
    assert (result.status, result.tokens_in, result.tokens_out) == (200, 3, 5)


async def test_an_error_answer_of_any_type_is_still_translated(
    upstream: Stub, client: UpstreamClient
) -> None:
    done = Done()
    answer = await _forward(client, upstream, "/error", done)
    assert not isinstance(answer, ProxyStream)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert orjson.loads(answer.body)["error"]["message"] == "no such voice"
    assert done.only.status == 400
