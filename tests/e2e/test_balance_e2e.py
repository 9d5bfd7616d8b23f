"""Load-aware tiers through a real gateway and real engine processes (stubs that stream as
slowly as told): least_busy sends concurrent requests to the idler member, round_robin
takes the members in turn, and the decision's trail shows the loads compared."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.conftest import ServedGateway, stub_log, stub_model, write_config

pytestmark = pytest.mark.e2e

TIERS = """\
tiers:
  pool: {members: [a, b], pick: least_busy}
  turns: {members: [a, b], pick: round_robin}
"""


def ask(gw: ServedGateway, tier: str, seconds: float, stream: bool = True) -> httpx.Response:
    """A chat to ``tier`` that the stub answers in about ``seconds``, read to its end."""
    chunks = 10
    body = {"model": tier, "stream": stream, "messages": [{"role": "user", "content": "hi"}],
            "stub": {"chunks": chunks, "gap": seconds / chunks}}  # fmt: skip
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        resp.read()
    assert resp.status_code == 200, resp.text
    return resp


@pytest.fixture
def gw(serve, tmp_path: Path) -> ServedGateway:  # type: ignore[no-untyped-def]
    models = stub_model("a", "--record", slots=2) + stub_model("b", "--record", slots=2)
    served: ServedGateway = serve(write_config(tmp_path, models + TIERS))
    return served


def test_least_busy_spreads_a_storm_and_sends_to_the_idler(gw: ServedGateway) -> None:
    for name in ("a", "b"):  # both loaded: least_busy then compares slots in use
        gw.admin("POST", f"/admin/models/{name}/start").raise_for_status()
        gw.wait_state(name, "ready")

    # A storm of 8 streams at once on 2 + 2 slots: half each, never over a member's slots.
    # Sent in one burst on open connections, so that the gateway decides them together
    # (streams ask for their place a loop turn after their decision).
    body = orjson.dumps({"model": "pool", "stream": True, "stub": {"chunks": 10, "gap": 0.15},
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    host, port = urlsplit(gw.url).hostname, urlsplit(gw.url).port
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    socks = [socket.create_connection((host, port), timeout=30) for _ in range(8)]
    for sock in socks:
        sock.sendall(request)
    for sock in socks:
        with sock:
            answer = b"".join(iter(lambda s=sock: s.recv(65536), b""))  # type: ignore[misc]
        assert answer.startswith(b"HTTP/1.1 200") and b"[DONE]" in answer, answer[:300]
    logs = {name: stub_log(gw, name) for name in ("a", "b")}
    assert {n: len(log["requests"]) for n, log in logs.items()} == {"a": 4, "b": 4}
    assert logs["a"]["peak"] == 2 and logs["b"]["peak"] == 2

    # One long stream holds a slot of a (both idle: the tier's order picks a) ...
    long = threading.Thread(target=ask, args=(gw, "pool", 4.0))
    long.start()
    deadline = time.monotonic() + 10
    while gw.model("a")["in_flight"] < 1:
        assert time.monotonic() < deadline, gw.model("a")
        time.sleep(0.05)
    # ... so the next request goes to b, the idler, and its trail says why.
    resp = ask(gw, "pool", 0.1, stream=False)
    assert resp.headers["x-modelyard-model"] == "b"
    decision = gw.admin("GET", f"/admin/decisions/{resp.headers['x-modelyard-decision']}").json()
    pick = [s for s in decision["trail"] if s["kind"] == "pick"]
    assert pick and pick[0]["why"].startswith("least_busy: b (b 0/2 slots, 0 queued; a 1/2"), pick
    long.join()

    # Clients that leave at every moment (before their answer, mid-stream) leave nothing
    # counted behind: once all is idle, the next decision compares empty members.
    for n in range(8):
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(request)
        if n % 2:
            sock.recv(200)  # its headers came: it leaves mid-stream
        sock.close()
    deadline = time.monotonic() + 20
    while gw.model("a")["in_flight"] or gw.model("b")["in_flight"]:
        assert time.monotonic() < deadline, (gw.model("a"), gw.model("b"))
        time.sleep(0.1)
    resp = ask(gw, "pool", 0.05, stream=False)
    decision = gw.admin("GET", f"/admin/decisions/{resp.headers['x-modelyard-decision']}").json()
    why = next(s["why"] for s in decision["trail"] if s["kind"] == "pick")
    assert why == "least_busy: a (a 0/2 slots, 0 queued; b 0/2 slots, 0 queued)", why


def test_round_robin_takes_the_members_in_turn(gw: ServedGateway) -> None:
    served = [ask(gw, "turns", 0.05, stream=False).headers["x-modelyard-model"] for _ in range(4)]
    assert served == ["a", "b", "a", "b"]
