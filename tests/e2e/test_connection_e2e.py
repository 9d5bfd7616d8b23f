"""The connection layer against hostile input: huge heads, slow heads, requests that are not HTTP.

A real ``modelyard serve`` process; the hostile input goes over raw sockets, exactly as a
LAN attacker would send it, and the ordinary requests alongside go through httpx and the
OpenAI SDK.
"""

from __future__ import annotations

import inspect
import json
import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServedGateway, stub_model, write_config

pytestmark = pytest.mark.e2e

LIMITS = "access:\n  max_headers: 100\n  max_header_bytes: 64KiB\n  header_timeout: 1\n"


def address(gw: ServedGateway) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_all(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def exchange(gw: ServedGateway, request: bytes) -> bytes:
    """Send ``request`` whole on a new connection; what comes back until the gateway closes.

    The send must complete: a refusal that closed on a client still sending would reset the
    connection, and most clients would then never read the answer.
    """
    with socket.create_connection(address(gw), timeout=10) as sock:
        sock.sendall(request)
        return read_all(sock)


def parse(response: bytes) -> tuple[int, dict[str, str], Any]:
    """The status, headers and JSON body of the one HTTP response in ``response``."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def split_first(data: bytes) -> tuple[bytes, bytes]:
    """The first HTTP response in ``data`` (by its content-length), and what follows it."""
    end = data.index(b"\r\n\r\n") + 4
    length = int(parse(data[:end] + b"null")[1]["content-length"])
    return data[: end + length], data[end + length :]


def peak_memory(gw: ServedGateway) -> int:
    """The gateway process's peak resident memory so far, in bytes."""
    with open(f"/proc/{gw.proc.pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def head(*lines: str) -> bytes:
    return ("\r\n".join(["GET /health HTTP/1.1", "Host: gw", *lines]) + "\r\n\r\n").encode()


def assert_error(response: bytes, status: int, code: str, *words: str) -> dict[str, Any]:
    got, headers, body = parse(response)
    assert got == status, response[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["code"] == code
    for word in words:
        assert word in error["message"], error["message"]
    return dict(error)


def test_headers_over_the_limits_get_431_and_the_connection_closes(
    serve: Any, tmp_path: Path
) -> None:
    gw = serve(write_config(tmp_path, stub_model("stub"), LIMITS))

    # 100 headers (Host and Connection among them) is the limit: served.
    legal = exchange(gw, head("Connection: close", *(f"x-h{i}: v" for i in range(98))))
    assert parse(legal)[0] == 200

    one_more = exchange(gw, head("Connection: close", *(f"x-h{i}: v" for i in range(99))))
    assert_error(one_more, 431, "headers_too_large", "more than 100 headers", "max_headers")

    many = exchange(gw, head(*(f"x-h{i}: v" for i in range(5000))))
    assert_error(many, 431, "headers_too_large", "more than 100 headers")

    # One 1 MB header: refused after the first 64 KiB.
    big = exchange(gw, head("x-big: " + "a" * 1024 * 1024))
    assert_error(big, 431, "headers_too_large", "65536 bytes", "max_header_bytes")

    # Ten 16 MB headers at once: the gateway holds none of them (uvicorn alone grew by some
    # 190 MB), and each client still gets to send it whole and read the answer (exchange()
    # fails if sending was cut: closing on unread data resets the connection).
    peak = peak_memory(gw)
    with ThreadPoolExecutor(10) as pool:
        huge_heads = list(pool.map(exchange, [gw] * 10, [head("x-big: " + "a" * 16_000_000)] * 10))
    for answer in huge_heads:
        assert_error(answer, 431, "headers_too_large")
    assert peak_memory(gw) - peak < 32 * 1024**2

    # Many small headers that together pass the size, in a single read.
    wide = exchange(gw, head(*(f"x-h{i}: {'b' * 1000}" for i in range(70))))
    assert_error(wide, 431, "headers_too_large", "65536 bytes")

    # A real client gets the same answer as an ordinary API error...
    huge = openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key="none",
        max_retries=0,
        default_headers={"x-big": "a" * 100_000},
    )
    with pytest.raises(openai.APIStatusError) as refused:
        huge.models.list()
    assert refused.value.status_code == 431
    assert refused.value.code == "headers_too_large"

    # ...and the ordinary ones go on: the SDK's own headers and 60 more.
    extra = {f"x-extra-{i}": "v" * 100 for i in range(60)}
    client = openai.OpenAI(
        base_url=gw.url + "/v1", api_key="none", max_retries=0, default_headers=extra
    )
    assert "stub" in [m.id for m in client.models.list()]
    assert "stub" in [m.id for m in gw.client.models.list()]


def test_slow_heads_get_408_and_are_closed_while_others_are_served(
    serve: Any, tmp_path: Path
) -> None:
    gw = serve(write_config(tmp_path, stub_model("stub"), LIMITS))
    opened = time.monotonic()
    silent = [socket.create_connection(address(gw)) for _ in range(5)]
    # Slowloris: a request line, then one more header byte every 0.2 s, never ending.
    # (Connected with nothing sent: 408 too.)
    trickling = [socket.create_connection(address(gw)) for _ in range(40)]
    for sock in trickling:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\nx-slow: ")
    # Kept alive: one whole request answered, then the next head trickles from its first
    # byte; or blank lines trickle, which uvicorn takes as activity (its keep-alive timer
    # stops) but which begin no request.
    kept = [socket.create_connection(address(gw)) for _ in range(8)]
    for sock in kept:
        sock.sendall(head())
    socks = silent + trickling + kept
    slow_head = b"GET /health HTTP/1.1\r\nHost: gw\r\nx-slow: " + b"a" * 100
    then = {sock: slow_head if i < 5 else b"\r\n" * 50 for i, sock in enumerate(kept)}
    sent = {sock: 0 for sock in kept}
    got: dict[socket.socket, bytes] = {sock: b"" for sock in socks}
    closed_after: dict[socket.socket, float] = {}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    served_meanwhile = False
    try:
        deadline = opened + 5
        next_byte = opened
        while len(closed_after) < len(socks) and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_byte:
                next_byte = now + 0.2
                for sock in trickling + kept:
                    if sock in closed_after or (sock in sent and not got[sock]):
                        continue  # a kept one trickles once its first answer came
                    byte = b"a"
                    if sock in sent:
                        byte = then[sock][sent[sock] : sent[sock] + 1]
                        sent[sock] += 1
                    try:
                        sock.send(byte)
                    except OSError:
                        pass
            if not served_meanwhile and now - opened > 0.5:
                assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
                assert "stub" in [m.id for m in gw.client.models.list()]
                served_meanwhile = True
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                got[sock] += chunk
                if not chunk:
                    closed_after[sock] = time.monotonic() - opened
                    selector.unregister(sock)
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    assert served_meanwhile
    held = [sock for sock in socks if sock not in closed_after]
    assert not held, f"{len(held)} of {len(socks)} connections still open after 5 s"
    for sock in silent + trickling:
        assert_error(got[sock], 408, "header_timeout", "within 1s", "access.header_timeout")
        assert 0.9 < closed_after[sock] < 3, closed_after[sock]
    for sock in kept:
        first, second = split_first(got[sock])
        assert parse(first)[0] == 200
        assert_error(second, 408, "header_timeout")
        assert 0.9 < closed_after[sock] < 3, closed_after[sock]
    assert httpx.get(gw.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: gw\r\nno colon here\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
    ],
    ids=["garbage", "header-without-colon", "bad-version", "tls-hello"],
)
def test_a_request_that_is_not_http_gets_a_json_400(
    serve: Any, tmp_path: Path, request_bytes: bytes
) -> None:
    gw = serve(write_config(tmp_path, stub_model("stub"), LIMITS))
    error = assert_error(exchange(gw, request_bytes), 400, "invalid_http")
    assert error["message"].startswith("the request is not valid HTTP/1.1")
    assert httpx.get(gw.url + "/health", timeout=5).status_code == 200


def test_on_header_still_repeats_uvicorns() -> None:
    """``Connection.on_header`` ends with uvicorn's own, copied for speed: they must agree."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from modelyard.gateway.connection import Connection

    def statements(method: Any) -> list[str]:
        lines = inspect.getsource(method).splitlines()[1:]  # without the def line
        return [s for line in lines if (s := line.strip()) and not s.startswith("#")]

    theirs = statements(HttpToolsProtocol.on_header)
    assert statements(Connection.on_header)[-len(theirs) :] == theirs
