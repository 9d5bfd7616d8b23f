"""The streaming proxy: forward a body to an instance and pass its bytes straight back.

aiohttp is the client: measured against httpx on this path (bench/proxy_client.py,
docs/benchmarks.md). Chunks are not parsed or re-encoded, save by a ``rewrite`` the caller
passes (a Harmony model's, gateway/harmony_stream.py); else the only change ever made is the
model name, and only for engines whose upstream name differs from the one asked for.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from modelyard.engines.base import Upstream
from modelyard.errors import Code, UpstreamFailed, UpstreamUnavailable
from modelyard.gateway.errors import from_upstream, sse_error
from modelyard.gateway.timeouts import Limits
from modelyard.gateway.usage import Result as Result  # the callers' too
from modelyard.gateway.usage import audio_seconds, count
from modelyard.gateway.watch import ClientWatch

# Hop-by-hop, length and CORS headers are the gateway's own business, not the upstream's.
_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


@dataclass
class UpstreamClient:
    """The gateway's HTTP client for its upstreams: no total timeout (generations are long).

    ``pooled`` keeps connections alive for every request; ``fresh`` opens a new one each
    time, to send a request again after a pooled connection turned out closed by its
    server (llama-server closes some after streamed answers without saying so, and the
    next pooled one may be just as closed).
    """

    pooled: aiohttp.ClientSession
    fresh: aiohttp.ClientSession

    async def close(self) -> None:
        await self.pooled.close()
        await self.fresh.close()


def new_client() -> UpstreamClient:
    # Idle connections are dropped before llama-server's own 5 s keep-alive ends.
    pooled = aiohttp.TCPConnector(limit=0, keepalive_timeout=4, ttl_dns_cache=300)
    fresh = aiohttp.TCPConnector(limit=0, force_close=True, ttl_dns_cache=300)
    return UpstreamClient(_session(pooled), _session(fresh))


def _session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    # No cookie jar: a cookie one upstream sets for one client must never go out with the
    # next client's request (and keeping none saves its bookkeeping on every request).
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


Done = Callable[[Result], None]


class Rewriter(Protocol):
    """Changes an answer's bytes as they pass: ``feed`` each chunk, then ``end`` once."""

    def feed(self, chunk: bytes) -> bytes: ...
    def end(self) -> bytes: ...


class Translation(Rewriter, Protocol):
    """A front-end's protocol, made of a Chat Completions answer: a stream through
    ``feed``/``end`` (its Content-Type ``content_type``), a whole answer by ``whole``, an
    error answer (in OpenAI's shape) by ``error``."""

    content_type: str

    def whole(self, body: bytes) -> bytes: ...
    def error(self, status: int, body: bytes) -> bytes: ...


class Chain:
    """One rewriter, then another."""

    def __init__(self, first: Rewriter, then: Rewriter) -> None:
        self.first, self.then = first, then

    def feed(self, chunk: bytes) -> bytes:
        return self.then.feed(self.first.feed(chunk))

    def end(self) -> bytes:
        return self.then.feed(self.first.end()) + self.then.end()


class Renamer:
    """Replaces the upstream's model name by the one the client asked for, in whole lines."""

    def __init__(self, old: str, new: str) -> None:
        self.old = b'"model":"' + old.encode() + b'"'
        self.new = b'"model":"' + new.encode() + b'"'
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        return data[:cut].replace(self.old, self.new)

    def end(self) -> bytes:
        rest, self._tail = self._tail.replace(self.old, self.new), b""
        return rest


async def forward(
    client: UpstreamClient,
    upstream: Upstream,
    path: str,
    body: bytes,
    *,
    stream: bool,
    asked_model: str,
    headers: dict[str, str],
    limits: Limits,
    done: Done,
    content_type: str = "application/json",
    rewrite: Rewriter | None = None,
    translate: Translation | None = None,
    last_event: bytes = b"data: [DONE]",
) -> Response:
    """POST ``body`` (of ``content_type``) to ``upstream`` + ``path``; ``done(result)`` runs
    when it is over.

    Three kinds of answer: JSON (and any error, and a stream of events the client did not
    ask for) is read whole, renamed and counted; a stream of events the client asked for is
    relayed chunk by chunk, renamed and counted; any other successful answer (audio, a file)
    is relayed chunk by chunk as it comes, untouched and uncounted. ``rewrite`` changes the
    first two kinds' bytes before the renaming does; ``translate`` turns what comes of both
    (errors too) into another protocol's answer, last. ``last_event``: the bytes of a
    stream's last event (after it, a client that hangs up had its whole answer).

    Raises UpstreamUnavailable, without calling ``done``, when the upstream fails or times
    out before the client got a byte: the caller then tries another candidate. The first
    chunk of a stream is read here, so a server that never starts its answer counts as such.
    """
    url = upstream.base_url + path
    send_headers = {"Content-Type": content_type, **upstream.headers}
    sent = time.monotonic()
    try:
        resp, first, whole = await _begin(client, url, body, send_headers, stream, limits)
    except aiohttp.ConnectionTimeoutError as exc:
        within = f"{round(limits.connect, 2):g}s (timeouts.connect)"
        raise UpstreamUnavailable(
            f"{asked_model}: no connection within {within}", Code.TIMEOUT
        ) from exc
    except TimeoutError as exc:
        within = f"{round(limits.first_byte, 2):g}s ({limits.first_byte_why})"
        raise UpstreamUnavailable(
            f"{asked_model}: no answer within {within}", Code.TIMEOUT
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"{asked_model}: its server failed to answer: {exc}") from exc
    first_byte = time.monotonic()
    out_headers = {
        k: v
        for k, v in resp.headers.items()
        if k.lower() not in _DROP and not k.lower().startswith("access-control-")
    }
    out_headers.update(headers)
    renamer: Rewriter | None = (
        Renamer(upstream.model, asked_model)
        if upstream.model and upstream.model != asked_model
        else None
    )
    if rewrite is not None:  # before the renaming, which then sees what it wrote
        renamer = rewrite if renamer is None else Chain(rewrite, renamer)
    if whole:
        resp.release()
        status = resp.status
        result = Result(status, None, sent, first_byte)
        if status >= 400:
            try:
                status, first = from_upstream(status, first, asked_model)
            except UpstreamFailed as exc:
                raise UpstreamUnavailable(str(exc)) from None
            result.status, result.error = status, first[:500].decode("utf-8", "replace")
            first = translate.error(status, first) if translate is not None else first
            out_headers = {k: v for k, v in out_headers.items() if k.lower() != "content-type"}
            out_headers["content-type"] = "application/json"
        else:
            if b'"usage"' in first:
                count(result, first)
            elif (seconds := resp.headers.get("x-audio-seconds")) is not None:
                result.audio_s = audio_seconds(seconds)
            if renamer is not None:
                first = renamer.feed(first) + renamer.end()
            if translate is not None:
                first = translate.whole(first)
                out_headers.pop("content-length", None)
                out_headers.pop("Content-Length", None)
        done(result)
        return Response(first, status_code=status, headers=out_headers)

    result = Result(resp.status, None, sent, first_byte)
    if resp.content_type != "text/event-stream":
        return _binary(resp, first, result, out_headers, asked_model, limits, done)
    if translate is not None:  # last: it sees the renamed chunks and the error events
        renamer = translate if renamer is None else Chain(renamer, translate)
        out_headers = {k: v for k, v in out_headers.items() if k.lower() != "content-type"}
        out_headers["content-type"] = translate.content_type
    cut: Callable[[bytes], bytes] = _same
    if translate is not None and renamer is not None:
        cut = renamer.feed  # an error event the relay writes is translated too
    complete = finished = False
    content = resp.content

    async def relay() -> AsyncIterator[bytes]:
        nonlocal complete, finished
        chunk = first
        counts = b""  # the last chunk that carries usage or timings
        watch = _IdleWatch(limits.idle, resp)
        clock = watch.loop.time
        try:
            while chunk:
                if b'"usage"' in chunk or b'"timings"' in chunk:
                    counts = chunk
                if last_event in chunk:
                    finished = True  # a client may hang up now, before the server's EOF
                yield renamer.feed(chunk) if renamer is not None else chunk
                watch.since = clock()  # only silence while reading counts, not a slow client
                chunk = await content.readany()
                watch.since = None
                if watch.fired:
                    raise TimeoutError
            if renamer is not None:
                yield renamer.end()
            complete = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            if watch.fired:
                silent = f"{round(limits.idle, 2):g}s (timeouts.idle)"
                result.status, result.error = 504, f"{asked_model} sent nothing for {silent}"
                yield cut(sse_error(f"{result.error}; the answer was cut", Code.TIMEOUT))
            else:
                result.status = 502
                result.error = f"{asked_model}: its server failed mid-stream: {exc}"
                yield cut(sse_error(result.error))
        finally:
            watch.cancel()
            if counts:
                count(result, counts)

    def closed() -> None:
        if complete:
            resp.release()  # the connection goes back to the pool
        else:
            resp.close()  # client gone or upstream broken: closing stops the generation
            if result.error is None and not finished:
                result.status, result.error = 499, "client went away"
        done(result)

    return ProxyStream(relay(), closed, status_code=resp.status, headers=out_headers)


def _binary(
    resp: aiohttp.ClientResponse,
    first: bytes,
    result: Result,
    out_headers: dict[str, str],
    asked_model: str,
    limits: Limits,
    done: Done,
) -> ProxyStream:
    """A successful answer that is neither JSON nor events (audio, a file), relayed as it
    comes: never read whole, never renamed, never counted.

    A cut can be told by nothing in the bytes (an error event appended would corrupt the
    audio), so a stream cut mid-way is not ended: the response is left incomplete, on
    which the ASGI server closes the connection without the last chunk of a chunked body
    (uvicorn logs "ASGI callable returned without completing response"). The upstream's
    Content-Length, when it sent one, goes to the client too (the bytes are passed through
    unchanged, encoded as they came: auto_decompress is off): a client then sees a body
    cut short even if its HTTP library is lax about a chunked body's last chunk, and can
    show progress. The result records the cut's 502 or 504 and why.
    """
    length = resp.headers.get("Content-Length")
    if length is not None:
        out_headers["content-length"] = length
    complete = False
    content = resp.content

    async def relay() -> AsyncIterator[bytes]:
        nonlocal complete
        chunk = first
        watch = _IdleWatch(limits.idle, resp)
        clock = watch.loop.time
        try:
            while chunk:
                yield chunk
                watch.since = clock()  # only silence while reading counts, not a slow client
                chunk = await content.readany()
                watch.since = None
                if watch.fired:
                    raise TimeoutError
            complete = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            if watch.fired:
                silent = f"{round(limits.idle, 2):g}s (timeouts.idle)"
                result.status, result.error = 504, f"{asked_model} sent nothing for {silent}"
            else:
                result.status = 502
                result.error = f"{asked_model}: its server failed mid-stream: {exc}"
            answer.cut = True
        finally:
            watch.cancel()

    def closed() -> None:
        if complete:
            resp.release()  # the connection goes back to the pool
        else:
            resp.close()  # client gone or upstream broken: closing stops the generation
            if result.error is None:
                result.status, result.error = 499, "client went away"
        done(result)

    answer = ProxyStream(relay(), closed, status_code=resp.status, headers=out_headers)
    return answer


class _IdleWatch:
    """Cuts a stream whose server stays silent for ``idle`` seconds while it is read.

    One timer per stream, re-armed only when it comes due, rather than a timeout around
    each chunk's read (about 5 µs a chunk, measured on this path).
    """

    def __init__(self, idle: float, resp: aiohttp.ClientResponse) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle, self.resp = idle, resp
        self.since: float | None = None  # when the read in progress began; None: not reading
        self.fired = False
        self._handle = self.loop.call_later(idle, self._check)

    def _check(self) -> None:
        now, since = self.loop.time(), self.since
        if since is not None and now - since >= self.idle:
            self.fired = True
            self.resp.close()  # the read waiting on it fails; closing stops the generation
            return
        self._handle = self.loop.call_at((now if since is None else since) + self.idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class ProxyStream(StreamingResponse):
    """A streamed answer whose ``closed`` callback runs however the stream ends.

    Starlette skips background tasks when the client goes away; this runs in ``finally``,
    so the instance's place is always given back and the upstream always closed.
    """

    def __init__(
        self, content: AsyncIterator[bytes], closed: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = closed
        self._closed_once = False
        self.watch: ClientWatch | None = None  # the request's, handed over to see it through
        self.cut = False  # left incomplete on purpose: a binary answer cut mid-way

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Sent here rather than by StreamingResponse, which (ASGI spec < 2.4, as uvicorn
        # says) runs each stream in a task group with a task of its own listening for the
        # disconnect. The request's watch does that job: it cancels this task.
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async for chunk in self.body_iterator:
                data = chunk if isinstance(chunk, bytes) else str(chunk).encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if not self.cut:  # a cut one ends without its end: the server drops the connection
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if self.watch is None or not self.watch.swallow():
                raise  # not the client leaving: the server's own cancel
        finally:
            if self.watch is not None:
                self.watch.stop()
            try:
                if isinstance(self.body_iterator, AsyncGenerator):
                    await self.body_iterator.aclose()  # its counts are in before the record
            finally:
                self._closed()  # even if a second cancel lands in the close

    def _closed(self) -> None:
        if not self._closed_once:  # however many ways it ends, it is given back once
            self._closed_once = True
            self._on_close()

    def abandon(self) -> None:
        """Close it unread: the upstream request and the instance's slot are given back."""
        self._closed()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The stream's bytes, for a response that already started elsewhere (keep-alive)."""
        try:
            async for chunk in self.body_iterator:
                yield chunk if isinstance(chunk, bytes) else str(chunk).encode()
        finally:
            try:
                if isinstance(self.body_iterator, AsyncGenerator):
                    await self.body_iterator.aclose()  # its timer stops, its counts are in
            finally:
                self._closed()


async def _begin(
    client: UpstreamClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    stream: bool,
    limits: Limits,
) -> tuple[aiohttp.ClientResponse, bytes, bool]:
    """The response, its first bytes and whether they are the whole body.

    Read whole: an error, JSON, events the client did not ask to stream. Else only the
    first chunk: of the events it asked to stream, or of an answer of any other type.
    Bounded by ``limits.first_byte``; on any failure or cancel the upstream connection is
    closed, which is what stops the server generating.
    """
    resp: aiohttp.ClientResponse | None = None
    try:
        async with asyncio.timeout(limits.first_byte):
            resp = await _post(client, url, body, headers, limits.connect)
            kind = resp.content_type
            if stream and kind == "text/event-stream":
                return resp, await resp.content.readany(), False
            if (
                kind == "application/json"
                or resp.status >= 400
                or kind == "text/event-stream"
                or kind.endswith("+json")
            ):
                return resp, await resp.read(), True
            return resp, await resp.content.readany(), False
    except BaseException:
        if resp is not None:
            resp.close()
        raise


async def _post(
    client: UpstreamClient, url: str, body: bytes, headers: dict[str, str], connect: float
) -> aiohttp.ClientResponse:
    """POST, once more on a new connection if a pooled one turns out closed by the server.

    A server may close a kept-alive connection just as it is reused (llama-server does so
    after some streamed answers, without a `Connection: close`): the request then cannot
    be written, or the server hangs up before answering. It answered nothing, so sending
    the request again cannot run it twice. A failure to connect is not retried here.
    """
    timeout = _timeouts(connect)
    try:
        return await client.pooled.post(url, data=body, headers=headers, timeout=timeout)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        # Not another pooled one: the server may have closed those too.
        return await client.fresh.post(url, data=body, headers=headers, timeout=timeout)


def _same(chunk: bytes) -> bytes:
    return chunk


@functools.lru_cache(maxsize=64)
def _timeouts(connect: float) -> aiohttp.ClientTimeout:
    # The first-byte and idle limits are the caller's (asyncio.timeout): aiohttp's read
    # timeout would also bound a whole non-streamed answer.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect)
