"""Instructions per request and per streamed chunk of each protocol front-end, by valgrind.

Chat Completions (``POST /v1/chat/completions``, the baseline) against Anthropic Messages
(``/v1/messages``) and OpenAI Responses (``/v1/responses``), each passed through as bytes to
an engine that speaks it ("native") or translated onto Chat Completions and back
("translated"), and Ollama's ``/api/chat`` (always translated).

The method is bench/instructions.py's: ``modelyard serve`` runs under ``valgrind
--tool=callgrind`` with counting off, is warmed, then counting is switched on for a batch of
requests at concurrency 16 from a plain aiohttp client and the total read (every thread of the
gateway, the store's writer included; not the kernel's work, not the engine's). One gateway
per front-end; in it, three batches are counted one after the other (the counters dumped and
reset between them): ``--requests`` non-streamed requests, then ``--streams`` streams of each
of the two ``--chunks`` sizes. (instructions(large) - instructions(small)) / (large - small)
is a streamed chunk's cost, and instructions(small) - small x that is a stream's fixed cost.

The engine is a stub served by this script itself (``_stub``, run by the gateway as two
``command`` models): ``plain`` (``protocols: []``: Anthropic and Responses requests reach it
translated) and ``native`` (``protocols: [anthropic, responses]``: they reach it as they
came). It answers Chat Completions, Messages and Responses, each answer built once and
cached: a short whole answer, or a stream of as many text deltas as the request's token limit
(``max_tokens``, ``max_output_tokens``, Ollama's ``options.num_predict``), each delta its own
write (chunked transfer encoding), with each protocol's opening and closing events around
them, and a usage chunk at the end of a Chat Completions stream when the request asks for it
(every translated stream does; so does the baseline here, so that it relays the very stream
the translations read).

Unpaced (the default), the stub writes a whole stream at once and the gateway reads it in a
read or two: a chunk then costs what processing an event costs, not what relaying a read
does. ``--gap SECONDS`` spaces a stream's writes, as an engine sends tokens as it makes them;
with a pace the gateway keeps up with under valgrind (``--gap 0.02 --concurrency 2`` did on 2
cores), each event is a read and a write of its own. The client counts the HTTP chunks each
answer came in (one per read the gateway relayed) and reports them, to show which it was.
A paced batch lasts longer, and a gateway does work by the clock too (timers, polls): that
is in the counts. ``--idle SECONDS`` counts the gateway idle for that long at the end and
reports how much of each batch that rate accounts for; in differences between front-ends at
one pace it cancels (the pace sets the wall time), in ratios it does not.

    .venv/bin/python bench/translation.py [--requests 1000] [--streams 200] [--chunks 100,400]
        [--fronts chat,anthropic-native,anthropic,responses-native,responses,ollama]
        (also chat-native: Chat Completions to the model that speaks all three, and
        chat-again: the baseline once more; both say what the run's noise is)
        [--gap 0] [--concurrency 16] [--warmup 300] [--stream-warmup 50] [--idle 0]

About one and a half minutes per front-end unpaced, three paced as above with ``--streams 20``
(Python runs some 50 times slower under valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import command_model, launch_gateway, write_config
from harness import CHAT, PROMPT, free_port, http_json, log, stop_process
from instructions import VALGRIND
from upstream_stub import BAD_REQUEST, StubProtocol, listening_socket

MODEL = "stub-model"
MESSAGES = b"/v1/messages"
RESPONSES = b"/v1/responses"
TEXT = "Hello from the stub."
CONCURRENCY = 16

# --------------------------------------------------------------------------- the stub engine


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _json(body: dict[str, Any]) -> bytes:
    data = orjson.dumps(body)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(data),
        data,
    )


def _events(events: Sequence[bytes]) -> tuple[bytes, ...]:
    """A stream's writes: its head, then each event in a chunk of its own, then the end."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    writes = [head, *(_chunked(e) for e in events)]
    writes[-1] += b"0\r\n\r\n"
    return tuple(writes)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (name.encode(), orjson.dumps(data))


def _token(i: int) -> str:
    return f"tok{i} "


def _chat(chunks: int, stream: bool, usage: bool) -> tuple[bytes, ...]:
    created = int(time.time())
    counts = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
    if not stream:
        message = {"role": "assistant", "content": TEXT}
        return (
            _json(
                {
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": created,
                    "model": MODEL, "usage": {**counts, "completion_tokens": 5},
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            ),
        )  # fmt: skip
    events = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": _token(i)} if i == 0 else {"content": _token(i)}
        finish = "stop" if i == chunks - 1 else None
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        event = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created,
                 "model": MODEL, "choices": [choice]}  # fmt: skip
        events.append(b"data: " + orjson.dumps(event) + b"\n\n")
    if usage:
        event = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created,
                 "model": MODEL, "choices": [], "usage": counts}  # fmt: skip
        events.append(b"data: " + orjson.dumps(event) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return _events(events)


def _messages(chunks: int, stream: bool) -> tuple[bytes, ...]:
    """An Anthropic Messages answer, as llama-server's /v1/messages gives one."""
    message: dict[str, Any] = {
        "id": "msg_stub", "type": "message", "role": "assistant", "model": MODEL,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 8, "output_tokens": 0},
    }  # fmt: skip
    if not stream:
        text = [{"type": "text", "text": TEXT}]
        done = {"stop_reason": "end_turn", "usage": {"input_tokens": 8, "output_tokens": 5}}
        return (_json({**message, "content": text, **done}),)
    events = [
        _sse("message_start", {"type": "message_start", "message": message}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}),
    ]  # fmt: skip
    for i in range(chunks):
        delta = {"type": "text_delta", "text": _token(i)}
        events.append(
            _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta",
             "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": chunks}}),
        _sse("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return _events(events)


def _responses(chunks: int, stream: bool) -> tuple[bytes, ...]:
    """An OpenAI Responses answer, as llama-server's /v1/responses gives one."""
    created = int(time.time())
    text = TEXT if not stream else "".join(_token(i) for i in range(chunks))
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"type": "message", "id": "msg_stub", "status": "completed", "role": "assistant",
            "content": [part]}  # fmt: skip
    output = 5 if not stream else chunks
    whole = {
        "id": "resp_stub", "object": "response", "created_at": created, "status": "completed",
        "model": MODEL, "output": [item],
        "usage": {"input_tokens": 8, "output_tokens": output, "total_tokens": 8 + output},
    }  # fmt: skip
    if not stream:
        return (_json(whole),)
    at = {"item_id": "msg_stub", "output_index": 0, "content_index": 0}
    opening = {**whole, "status": "in_progress", "output": [], "usage": None}
    said: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": opening}),
        ("response.in_progress", {"response": opening}),
        ("response.output_item.added", {"output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
    ]  # fmt: skip
    said += [("response.output_text.delta", {**at, "delta": _token(i)}) for i in range(chunks)]
    said += [
        ("response.output_text.done", {**at, "text": text}),
        ("response.content_part.done", {**at, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": whole}),
    ]
    return _events(
        [_sse(name, {"type": name, **data, "sequence_number": n}) for n, (name, data) in
         enumerate(said)]
    )  # fmt: skip


@functools.cache
def answer(path: bytes, chunks: int, stream: bool, usage: bool) -> tuple[bytes, ...]:
    """The writes that answer a request to ``path`` (built once per shape)."""
    if path == MESSAGES:
        return _messages(chunks, stream)
    if path == RESPONSES:
        return _responses(chunks, stream)
    return _chat(chunks, stream, usage)


class ProtocolStub(StubProtocol):
    """bench/upstream_stub.py's protocol, answering Chat Completions, Messages and Responses."""

    def __init__(self, gap: float) -> None:
        super().__init__(b"", [])
        self._gap = gap  # seconds between a stream's writes (0: all at once)

    paths = (CHAT.encode(), MESSAGES, RESPONSES)

    def respond(self, transport: asyncio.Transport, path: bytes, request: object) -> bool:
        if not isinstance(request, dict):
            transport.write(BAD_REQUEST)
            return False
        limit = request.get("max_output_tokens" if path == RESPONSES else "max_tokens")
        chunks = limit if isinstance(limit, int) and 0 < limit <= 100_000 else 32
        asks = request.get("stream_options")
        usage = isinstance(asks, dict) and asks.get("include_usage") is True
        writes = answer(path, chunks, request.get("stream") is True, usage)
        if self._gap > 0 and len(writes) > 2:
            self._pace(transport, writes)
            return True  # the last write closes the connection if it is not kept alive
        for piece in writes:
            transport.write(piece)
        return False

    def _pace(self, transport: asyncio.Transport, writes: tuple[bytes, ...]) -> None:
        """The head and first event now, each further event ``gap`` seconds after the one
        before, as an engine sends tokens as it makes them (as bench/paced_stub.py does)."""
        head, first, *rest = writes
        transport.write(head + first)
        loop = asyncio.get_running_loop()
        close = not self._parser.should_keep_alive()
        for i, piece in enumerate(rest, 1):
            loop.call_later(i * self._gap, _send, transport, piece, close and i == len(rest))


def _send(transport: asyncio.Transport, piece: bytes, close: bool) -> None:
    if not transport.is_closing():
        transport.write(piece)
        if close:
            transport.close()


async def serve_stub(sock: socket.socket, gap: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ProtocolStub(gap), sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def run_stub(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="translation.py _stub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between stream writes")
    args = parser.parse_args(argv)
    sock = listening_socket(args.host, args.port, None)
    try:
        uvloop.run(serve_stub(sock, args.gap))
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------- the front-ends


@dataclass(frozen=True)
class Front:
    """One protocol front-end as a client calls it."""

    name: str
    path: str
    model: str  # ``plain`` (Chat Completions only) or ``native`` (speaks all three)
    protocol: str | None  # the ``x-modelyard-protocol`` the answer must carry
    last: bytes  # what the end of a streamed answer holds

    def body(self, stream: bool, chunks: int) -> bytes:
        said = [{"role": "user", "content": PROMPT}]
        body: dict[str, Any] = {"model": self.model}
        if self.path == CHAT:
            body |= {"messages": said, "max_tokens": chunks, "stream": stream}
            if stream:  # as every translated stream asks: the same stream comes back
                body["stream_options"] = {"include_usage": True}
        elif self.path == "/v1/messages":
            body |= {"max_tokens": chunks, "messages": said, "stream": stream}
        elif self.path == "/v1/responses":
            body |= {"input": PROMPT, "max_output_tokens": chunks, "stream": stream}
        else:  # Ollama's /api/chat
            body |= {"messages": said, "stream": stream, "options": {"num_predict": chunks}}
        return orjson.dumps(body)


FRONTS = {
    f.name: f
    for f in (
        Front("chat", CHAT, "plain", None, b"data: [DONE]"),
        Front("anthropic-native", "/v1/messages", "native", "anthropic; native", b"message_stop"),
        Front("anthropic", "/v1/messages", "plain", "anthropic; translated", b"message_stop"),
        Front("responses-native", "/v1/responses", "native", "responses; native",
              b"response.completed"),
        Front("responses", "/v1/responses", "plain", "responses; translated",
              b"response.completed"),
        Front("ollama", "/api/chat", "plain", None, b'"done":true'),
        # The run's own noise: Chat Completions again, to the other model and in a gateway
        # of its own (not in the default list).
        Front("chat-native", CHAT, "native", None, b"data: [DONE]"),
        Front("chat-again", CHAT, "plain", None, b"data: [DONE]"),
    )
}  # fmt: skip
DEFAULT_FRONTS = "chat,anthropic-native,anthropic,responses-native,responses,ollama"

# --------------------------------------------------------------------------- counting


async def fire(url: str, body: bytes, n: int, concurrency: int = CONCURRENCY) -> float:
    """``n`` requests at ``concurrency``, each answer read whole; the mean number of HTTP
    chunks an answer came in. Raises on any non-200."""
    headers = {"Content-Type": "application/json"}
    left, pieces = n, 0
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left, pieces
            while left > 0:
                left -= 1
                async with session.post(url, data=body, headers=headers) as r:
                    async for _, end in r.content.iter_chunks():
                        pieces += end
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")

        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return pieces / n


async def check(url: str, front: Front, body: bytes, stream: bool) -> None:
    """One request: answered 200, by the path it is meant to take, whole."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        data = await r.read()
        said = r.headers.get("x-modelyard-protocol")
        if r.status != 200 or said != front.protocol:
            raise RuntimeError(f"{front.name}: {r.status}, protocol {said!r}: {data[:300]!r}")
        if stream and front.last not in data:
            raise RuntimeError(f"{front.name}: the stream did not end with {front.last!r}")
        if not stream:
            orjson.loads(data)


@dataclass
class Batch:
    """One counted batch: what it was; instructions and HTTP chunks per answer, wall time."""

    stream: bool
    chunks: int
    count: int
    per_answer: float = 0.0
    pieces: float = 0.0
    wall_s: float = 0.0


@dataclass
class Callgrind:
    """The callgrind of one process: count what an action makes it do."""

    pid: int
    folder: Path
    seen: set[Path]

    def count(self, action: Callable[[], object]) -> int:
        """Instructions the process ran during ``action()`` (counting on, then dumped)."""
        control = ["callgrind_control"]
        pid = str(self.pid)
        subprocess.run([*control, "-i", "on", pid], check=True, capture_output=True)
        action()
        subprocess.run([*control, "-i", "off", pid], check=True, capture_output=True)
        subprocess.run([*control, "-d", pid], check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while True:
            new = sorted(set(self.folder.glob(f"cg.{pid}*")) - self.seen)
            total = _totals(new) if new else 0
            if total:
                self.seen |= set(new)
                return total
            if time.monotonic() > deadline:
                raise RuntimeError(f"no callgrind totals in {self.folder}")
            time.sleep(0.5)


def _totals(files: list[Path]) -> int:
    total = 0
    for dump in files:
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def measure(front: Front, batches: list[Batch], args: argparse.Namespace) -> float:
    """Count each batch of ``front`` in one gateway under callgrind (fills them in); the
    gateway's instructions per second while idle, if ``--idle`` asks (else 0)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"modelyard-translation-{front.name}-"))
    port = free_port()
    stub = [sys.executable, str(Path(__file__).resolve()), "_stub", "--port", "{port}"]
    stub += ["--gap", str(args.gap)]
    models = {
        "plain": command_model(stub, 256, 1000) + "    protocols: []\n",
        "native": command_model(stub, 256, 1000) + "    protocols: [anthropic, responses]\n",
    }
    config = write_config(tmp, port, models)
    base = f"http://127.0.0.1:{port}"
    url = base + front.path
    wrapper = [*VALGRIND, f"--callgrind-out-file={tmp / 'cg'}.%p"]
    gw = launch_gateway(config, port, tmp / "gateway.log", wrapper)
    try:
        deadline = time.monotonic() + 300  # Python under valgrind starts slowly
        while True:
            try:
                http_json(f"{base}/admin/models/{front.model}/start", "POST")
                break
            except OSError:
                if time.monotonic() > deadline or gw.proc.poll() is not None:
                    raise
                time.sleep(1)
        for b in batches:
            asyncio.run(check(url, front, front.body(b.stream, b.chunks), b.stream))
        for b in batches:
            warm = args.stream_warmup if b.stream else args.warmup
            asyncio.run(fire(url, front.body(b.stream, b.chunks), warm, args.concurrency))
        grind = Callgrind(gw.proc.pid, tmp, set(tmp.glob(f"cg.{gw.proc.pid}*")))
        for b in batches:
            body = front.body(b.stream, b.chunks)

            def run(b: Batch = b, body: bytes = body) -> None:
                began = time.monotonic()
                b.pieces = asyncio.run(fire(url, body, b.count, args.concurrency))
                b.wall_s = time.monotonic() - began

            b.per_answer = grind.count(run) / b.count
            what = f"stream of {b.chunks} chunks" if b.stream else "non-streamed request"
            log(f"{front.name}: {b.per_answer / 1000:,.0f}k instructions per {what} "
                f"({b.pieces:.1f} HTTP chunks per answer, {b.wall_s:.1f} s)")  # fmt: skip
        idle = 0.0
        if args.idle > 0:
            idle = grind.count(lambda: time.sleep(args.idle)) / args.idle
            log(f"{front.name}: {idle / 1000:,.0f}k instructions per second idle")
        return idle
    finally:
        stop_process(gw.proc)


# --------------------------------------------------------------------------- the report


def k(n: float) -> str:
    return f"{n / 1000:,.0f}k"


def report(figures: dict[str, list[Batch]], idle: dict[str, float], small: int, large: int) -> None:
    base = figures.get("chat")
    span = large - small

    def parts(batches: list[Batch]) -> tuple[float, float, float, float, float]:
        whole, s, big = batches
        chunk = (big.per_answer - s.per_answer) / span
        return whole.per_answer, s.per_answer, big.per_answer, chunk, s.per_answer - small * chunk

    print(
        f"\n| front-end | non-streamed request | stream of {small} | stream of {large} | "
        "per streamed chunk | a stream's fixed part | HTTP chunks per stream "
        f"({small} / {large}) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    ref = parts(base) if base else None
    for name, batches in figures.items():
        got = parts(batches)
        cells = []
        for i, value in enumerate(got):
            cell = f"{value / 1000:,.1f}k" if i == 3 else k(value)
            if ref is not None and name != "chat":
                cell += f" ({value / ref[i]:.2f}x)"
            cells.append(cell)
        pieces = f"{batches[1].pieces:.1f} / {batches[2].pieces:.1f}"
        print(f"| {name} | {' | '.join(cells)} | {pieces} |")
    if ref is not None:
        print("\nOver Chat Completions (instructions):")
        for name, batches in figures.items():
            if name == "chat":
                continue
            got = parts(batches)
            print(
                f"  {name}: {(got[0] - ref[0]) / 1000:+,.0f}k per non-streamed request, "
                f"{(got[3] - ref[3]) / 1000:+,.1f}k per streamed chunk, "
                f"{(got[4] - ref[4]) / 1000:+,.0f}k per stream besides its chunks"
            )
    if any(idle.values()):
        print("\nIdle (timers, the store: instructions by the clock, not by the request):")
        for name, rate in idle.items():
            share = [rate * b.wall_s / b.count for b in figures[name]]
            print(
                f"  {name}: {k(rate)} per second; at that rate the batches' wall time is "
                f"{k(share[0])} per non-streamed request, {k(share[1])} per stream of {small}, "
                f"{k(share[2])} per stream of {large} ({(share[2] - share[1]) / span / 1000:,.1f}k "
                "per chunk)"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_stub":
        run_stub(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="non-streamed, counted")
    parser.add_argument("--streams", type=int, default=200, help="counted, per stream size")
    parser.add_argument("--chunks", default="100,400", help="the two stream sizes")
    parser.add_argument("--warmup", type=int, default=300, help="non-streamed, before counting")
    parser.add_argument("--stream-warmup", type=int, default=50, help="per stream size")
    parser.add_argument("--fronts", default=DEFAULT_FRONTS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument(
        "--gap", type=float, default=0.0, help="seconds between a stream's writes (0: none)"
    )
    parser.add_argument(
        "--idle", type=float, default=0.0, help="also count this many seconds of idle gateway"
    )
    args = parser.parse_args()
    small, large = sorted(int(c) for c in args.chunks.split(","))
    if not 0 < small < large:
        parser.error("--chunks: two different sizes, each at least 1")
    fronts = args.fronts.split(",")
    unknown = [f for f in fronts if f not in FRONTS]
    if unknown:
        parser.error(f"unknown front-ends {unknown}: {', '.join(FRONTS)}")
    figures: dict[str, list[Batch]] = {}
    idle: dict[str, float] = {}
    for name in fronts:
        batches = [
            Batch(False, small, args.requests),
            Batch(True, small, args.streams),
            Batch(True, large, args.streams),
        ]
        idle[name] = measure(FRONTS[name], batches, args)
        figures[name] = batches
    report(figures, idle, small, large)


if __name__ == "__main__":
    main()
