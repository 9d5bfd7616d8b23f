"""A tiny, fast OpenAI-compatible upstream for benchmarks: no model, no sleeps.

POST /v1/chat/completions answers a small ``chat.completion`` JSON, or, when the body has
``"stream": true``, ``--chunks`` SSE events in the ``chat.completion.chunk`` shape followed by
``data: [DONE]``, sent with chunked transfer encoding, one write per event (as llama-server
flushes one event per token). GET /health answers ``{"status":"ok"}``.

It is a bare asyncio protocol on uvloop with the httptools parser and every answer built once
at start, so that it costs far less CPU per request than anything put in front of it.

    python bench/upstream_stub.py --port 8089 --chunks 32
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from typing import cast

import httptools
import orjson
import uvloop

MODEL = "stub-model"
CHAT_PATH = b"/v1/chat/completions"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def build_answers(chunks: int) -> tuple[bytes, list[bytes]]:
    """The whole non-stream answer, and the stream answer as the list of writes to make."""
    created = int(time.time())
    completion = orjson.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the stub."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13},
        }
    )
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(completion),
        completion,
    )
    writes = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    ]
    for i in range(chunks):
        last = i == chunks - 1
        delta = {"role": "assistant", "content": f"tok{i} "} if i == 0 else {"content": f"tok{i} "}
        event = {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": "length" if last else None}],
        }
        writes.append(_chunked(b"data: " + orjson.dumps(event) + b"\n\n"))
    writes.append(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return plain, writes


def _simple(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        status,
        len(body),
        body,
    )


HEALTH = _simple(b"200 OK", b'{"status":"ok"}')
NOT_FOUND = _simple(b"404 Not Found", b'{"error":{"message":"not found"}}')
BAD_REQUEST = _simple(b"400 Bad Request", b'{"error":{"message":"bad request"}}')


class StubProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; pipelined requests are answered in order."""

    def __init__(self, plain: bytes, stream: list[bytes]) -> None:
        self._plain = plain
        self._stream = stream
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, and set TCP_NODELAY already.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(BAD_REQUEST)
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def send_stream(self, transport: asyncio.Transport) -> bool:
        """Write the streamed answer; True if it decides keep-alive itself (later)."""
        for piece in self._stream:
            transport.write(piece)
        return False

    paths: tuple[bytes, ...] = (CHAT_PATH,)  # what it answers POSTs on

    def respond(self, transport: asyncio.Transport, path: bytes, request: object) -> bool:
        """Write the answer to the JSON ``request`` POSTed on ``path``; True if keep-alive
        is decided later (once a stream is written)."""
        if isinstance(request, dict) and request.get("stream") is True:
            return self.send_stream(transport)
        transport.write(self._plain)
        return False

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        method = self._parser.get_method()
        path = self._url.split(b"?", 1)[0]
        if method == b"POST" and path in self.paths:
            try:
                request = orjson.loads(b"".join(self._body))
            except orjson.JSONDecodeError:
                transport.write(BAD_REQUEST)
            else:
                if self.respond(transport, path, request):
                    return  # keep-alive is decided once the stream is written
        elif method == b"GET" and path == b"/health":
            transport.write(HEALTH)
        else:
            transport.write(NOT_FOUND)
        if not self._parser.should_keep_alive():
            transport.close()


async def serve(sock: socket.socket, chunks: int) -> None:
    plain, stream = build_answers(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubProtocol(plain, stream), sock=sock, backlog=4096)
    host, port = sock.getsockname()[:2]
    print(f"upstream stub on http://{host}:{port} ({chunks} chunks per stream)", file=sys.stderr)
    async with server:
        await server.serve_forever()


def listening_socket(host: str, port: int, fd: int | None) -> socket.socket:
    """The non-blocking socket to serve on: inherited (``--fd``), or bound to host:port."""
    if fd is not None:
        sock = socket.socket(fileno=fd)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
    sock.setblocking(False)
    return sock


def stub_parser(description: str) -> argparse.ArgumentParser:
    """The stubs' common options: where to listen and how many chunks a stream has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    parser.add_argument("--chunks", type=int, default=32, help="SSE chunks per stream")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = stub_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    sock = listening_socket(args.host, args.port, args.fd)
    try:
        uvloop.run(serve(sock, args.chunks))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
