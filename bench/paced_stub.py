"""bench/upstream_stub.py with a pace: streamed chunks spaced by ``--gap`` seconds.

The same answers, parser and protocol as bench/upstream_stub.py (imported, not copied), but a
streamed answer's headers and first chunk go out at once and each further chunk ``--gap``
seconds after the one before, ``data: [DONE]`` with the last, as a model generating tokens
at a steady rate sends them. With many streams at once the upstream, not the load generator,
then sets the pace, so a proxy's chunks/s can be compared with direct's where both should
reach the same figure. Non-streamed answers go out at once.

    python bench/paced_stub.py --port 8089 --chunks 32 --gap 0.02
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream_stub import (  # bench/ is not a package: found through sys.path
    StubProtocol,
    build_answers,
    listening_socket,
    stub_parser,
)


class PacedProtocol(StubProtocol):
    """One keep-alive connection whose streamed answers are written ``gap`` seconds apart."""

    def __init__(self, plain: bytes, stream: list[bytes], gap: float) -> None:
        super().__init__(plain, stream)
        self._gap = gap

    def send_stream(self, transport: asyncio.Transport) -> bool:
        self._pace(transport)
        return True

    def _pace(self, transport: asyncio.Transport) -> None:
        head, first, *rest = self._stream
        transport.write(head + first)
        loop = asyncio.get_running_loop()
        # The last piece is [DONE] and the chunked terminator: it goes with the last chunk.
        pieces = [*rest[:-2], rest[-2] + rest[-1]] if len(rest) >= 2 else rest
        keep = self._parser.should_keep_alive()
        for i, piece in enumerate(pieces, 1):
            last = i == len(pieces)
            loop.call_later(i * self._gap, self._send, transport, piece, last and not keep)

    @staticmethod
    def _send(transport: asyncio.Transport, piece: bytes, close: bool) -> None:
        if not transport.is_closing():
            transport.write(piece)
            if close:
                transport.close()


async def serve(sock: socket.socket, chunks: int, gap: float) -> None:
    plain, stream = build_answers(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: PacedProtocol(plain, stream, gap), sock=sock, backlog=4096
    )
    host, port = sock.getsockname()[:2]
    print(
        f"paced stub on http://{host}:{port} ({chunks} chunks per stream, {gap * 1000:g} ms apart)",
        file=sys.stderr,
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = stub_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between chunks")
    args = parser.parse_args(argv)
    if args.chunks < 2:
        parser.error("--chunks must be at least 2")
    sock = listening_socket(args.host, args.port, args.fd)
    try:
        uvloop.run(serve(sock, args.chunks, args.gap))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
