"""The connection layer: how much of a request's head the gateway reads, and for how long.

uvicorn's httptools protocol reads a request's head with no bound on its size, its number of
headers or the time it takes. ``Connection`` adds the three limits of ``access``
(``max_headers``, ``max_header_bytes``, ``header_timeout``) while parsing, and answers what
uvicorn would answer in plain text (a request that is not HTTP) in the OpenAI error shape:

- more headers or more header bytes than allowed: ``431``, code ``headers_too_large``;
- a head not complete ``header_timeout`` after the connection opened (its first request)
  or after the request's first byte (later ones): ``408``, code ``header_timeout``;
- not valid HTTP/1.1: ``400``, code ``invalid_http``.

Each of these closes the connection. This is the hot path: per request it costs a few
integer adds and one clock read, and the one timer of a connection is armed only when a head
starts with none pending (one that fires early re-arms itself for the head now read).
"""

from __future__ import annotations

import asyncio
import http
import logging
import sys
from typing import Any, ClassVar

import httptools
import orjson
import uvicorn
from starlette.types import ASGIApp, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard.config.schema import Access
from modelyard.errors import Code, status_of
from modelyard.gateway.errors import error_body

log = logging.getLogger("modelyard.gateway")

# After a refusal the client may still be sending (the rest of a 1 MB header): closing with
# unread data makes the kernel send a reset, which can destroy our answer before the client
# reads it. So the rest is read and dropped for up to this long, after the answer and a FIN.
LINGER_S = 2.0


# The scope key under which a request's header count and bytes are left for the app.
HEAD_KEY = "modelyard.head"

_base = HttpToolsProtocol  # the per-request overrides call it directly: super() costs more


class Connection(HttpToolsProtocol):
    """uvicorn's httptools protocol, with bounded request heads and errors in our shape.

    ``run_server`` uses a subclass with the config's limits as these class attributes.
    """

    max_headers: ClassVar[int] = 100
    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's head (a new connection waits for one)
        self._head_since = 0.0  # when that head started: the connection, or its first byte
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0  # headers of this head parsed so far
        self._head_bytes = 0  # their names' and values' bytes, plus ": " and CRLF each
        self._head_seen = 0  # bytes received while in this head (bounds what httptools buffers)
        self._refused = False  # answered with an error: nothing more is read or said

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_at(
            self._head_since + self.header_timeout, self._head_deadline
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_seen += len(data)
        _base.data_received(self, data)
        if self._in_head:
            # httptools keeps a header it has not seen the end of, and uvicorn the URL: a head
            # still not complete after more than the limit is refused before the next read,
            # so what one connection holds stays under the limit plus two reads.
            if self._head_seen > self.max_header_bytes and not self._refused:
                self._too_large(f"more than {self.max_header_bytes} bytes of request head")
        elif (
            (cycle := self.cycle) is not None
            and cycle.response_complete
            and not cycle.more_body
            and not self.transport.is_closing()
        ):
            # Bytes after a whole request and its answer that begin no new one (blank
            # lines): uvicorn stopped its keep-alive timer when they came, so they start the
            # wait for the next head. (The rest of a body that was answered early, before it
            # was read, leaves more_body set: that is not a head.)
            self._start_head()

    # Parser callbacks (httptools calls them from inside feed_data)

    def on_message_begin(self) -> None:
        _base.on_message_begin(self)
        if not self._in_head:  # a later request on a kept-alive connection
            self._start_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._head_count > self.max_headers:
            raise _TooLarge(f"more than {self.max_headers} headers")
        if self._head_bytes > self.max_header_bytes:
            raise _TooLarge(f"more than {self.max_header_bytes} bytes of headers")
        # The rest is uvicorn's own on_header, repeated rather than called: this runs for
        # every header of every request. tests/e2e/test_connection_e2e.py checks it still matches.
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        # What the head held, for a decision's summary: counted here anyway.
        self.scope[HEAD_KEY] = (self._head_count, self._head_bytes)  # type: ignore[literal-required]
        _base.on_headers_complete(self)

    def _start_head(self) -> None:
        self._in_head = True
        self._head_count = self._head_bytes = self._head_seen = 0
        self._head_since = self.loop.time()
        if self._head_timer is None:  # else the armed one finds the new start when it fires
            self._head_timer = self.loop.call_at(
                self._head_since + self.header_timeout, self._head_deadline
            )

    # Refusals

    def send_400_response(self, msg: str) -> None:
        """Answer a request httptools could not parse (uvicorn calls this inside its except)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(
            exc.__context__, _TooLarge
        ):
            self._too_large(str(exc.__context__))
            return
        detail = f": {exc}" if exc is not None and str(exc) else ""
        self._refuse(Code.INVALID_HTTP, f"the request is not valid HTTP/1.1{detail}")

    def _too_large(self, what: str) -> None:
        self._refuse(
            Code.HEADERS_TOO_LARGE,
            f"request headers too large: {what}; the limits are {self.max_headers} headers "
            f"and {self.max_header_bytes} bytes (access.max_headers, access.max_header_bytes)",
        )

    def _head_deadline(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused or self.transport.is_closing():
            return  # the head came in time; the next one re-arms the timer
        left = self._head_since + self.header_timeout - self.loop.time()
        if left > 0:  # armed for an earlier head than this one
            self._head_timer = self.loop.call_later(left, self._head_deadline)
            return
        self._refuse(
            Code.HEADER_TIMEOUT,
            f"the request's headers did not arrive within {self.header_timeout:g}s "
            "(access.header_timeout)",
        )

    def _refuse(self, code: Code, message: str) -> None:
        """Answer ``code`` (its status) with an OpenAI-shaped error and close, once it can be
        said."""
        if self._refused:
            return
        self._refused = True
        status = status_of(code)
        log.warning("%s: %d %s: %s", _peer(self.client), status, code, message)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if self._in_head:
                # A pipelined request's head: the answer to the one before is still going
                # out. Let it finish, read nothing more, and close after it.
                cycle.keep_alive = False
                self.flow.pause_reading()
                return
            if cycle.response_started:
                self.transport.close()  # the body under way is broken; no answer fits now
                return
            # The body of the request being served is broken: the app sees a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
        body = orjson.dumps(error_body(status, message, code))
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        transport = self.transport
        transport.write(b"".join(head) + body)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.set_protocol(_Linger(self, transport))
        transport.resume_reading()


class _TooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limits."""


class _Linger(asyncio.Protocol):
    """Reads and drops what a refused client still sends, so that it can read our answer."""

    def __init__(self, owner: Connection, transport: asyncio.Transport) -> None:
        self._owner = owner
        self._timer = owner.loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._owner.connection_lost(exc)


def head_size(scope: Scope) -> tuple[int, int]:
    """How many headers the request has and their bytes: counted by the connection as it
    read them, else (another server, a test's ASGI call) counted here."""
    counted: tuple[int, int] | None = scope.get(HEAD_KEY)
    if counted is not None:
        return counted
    listed = scope["headers"]
    return len(listed), sum(len(k) + len(v) + 4 for k, v in listed)


def head_value(scope: Scope, *names: bytes) -> bytes | None:
    """The value of the first header named one of ``names`` (lower-case bytes, as ASGI
    gives them), read from the raw list: no dict of every header built for one look."""
    for name, value in scope["headers"]:
        if name in names:
            return bytes(value)
    return None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


def connection_class(access: Access) -> type[Connection]:
    """``Connection`` with the limits of ``access``."""

    class Limited(Connection):
        max_headers = access.max_headers
        max_header_bytes = access.max_header_bytes
        header_timeout = access.header_timeout

    return Limited


def run_server(app: ASGIApp, host: str, port: int, access: Access, **kw: Any) -> None:
    """Serve ``app`` on ``host:port`` until stopped, each connection under ``access``'s limits.

    ``kw`` goes to ``uvicorn.run`` (log level, graceful shutdown, ...).
    """
    uvicorn.run(app, host=host, port=port, http=connection_class(access), **kw)
