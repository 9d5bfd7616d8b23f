"""``GET /admin/events`` against a real gateway: what a console or ``top`` sees, and a
subscriber that stops reading costs the gateway nothing but its buffer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from modelyard.top import Follower
from tests.conftest import ServedGateway, stub_model, write_config

pytestmark = pytest.mark.e2e


def _events(lines: Any, want: int) -> list[dict[str, Any]]:
    """The next ``want`` events of an SSE line iterator, as dicts with their kind."""
    found: list[dict[str, Any]] = []
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            found.append({"sse_event": kind, **json.loads(line.removeprefix("data: "))})
            if len(found) == want:
                return found
    return found


def test_instance_request_and_config_events_reach_a_subscriber(serve: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, stub_model("slow", slots=2))
    gw: ServedGateway = serve(config)
    url = gw.url + "/admin/events?kinds=instance,request,config"
    with httpx.stream("GET", url, timeout=30) as stream:
        lines = stream.iter_lines()
        assert gw.admin("POST", "/admin/models/slow/start").status_code == 200
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).is_success
        config.write_text(config.read_text().replace("slots: 2", "slots: 3"))
        assert gw.admin("POST", "/admin/reload").status_code == 200
        seen = _events(lines, 7)
    kinds = [(e["kind"], e.get("event") or e.get("status")) for e in seen]
    assert kinds == [
        ("instance", "starting"),
        ("instance", "ready"),
        ("request", 200),
        ("config", None),  # the new config is in force: then the old instance drains
        ("instance", "draining"),
        ("instance", "stopping"),
        ("instance", "stopped"),
    ], kinds
    assert all(e["sse_event"] == e["kind"] for e in seen)
    assert seen[2]["model"] == "slow" and seen[2]["instance"] == "slow#1"
    assert seen[3]["changed"] == ["slow"]
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs)
    r = httpx.get(gw.url + "/admin/events?kinds=instance,nope", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "kinds"

    # `modelyard top` follows the same stream: a finished request shows at once.
    recent: deque[dict[str, Any]] = deque(maxlen=5)
    follower = Follower(gw.url, {}, recent)
    follower.start()
    time.sleep(0.5)  # subscribed
    body["stub"] = {"tag": "seen-by-top"}
    assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).is_success
    assert follower.changed.wait(5)
    deadline = time.monotonic() + 5
    while not recent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recent and recent[0]["model"] == "slow" and recent[0]["status"] == 200


def test_a_subscriber_that_stops_reading_is_bounded_then_dropped(
    serve: Any, tmp_path: Path
) -> None:
    gw: ServedGateway = serve(write_config(tmp_path, stub_model("slow", slots=16)))
    assert gw.admin("POST", "/admin/models/slow/start").status_code == 200
    host, port = gw.url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    stalled.sendall(b"GET /admin/events?kinds=request HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 10
    while gw.admin("GET", "/admin/status").json()["event_subscribers"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rss = _rss_kib(gw.proc.pid)

    async def flood() -> list[int]:
        body = {"model": "slow", "messages": [{"role": "user", "content": "x" * 2000}],
                "stub": {"chunks": 1}}  # fmt: skip
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.post(gw.url + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    return r.status

            statuses: list[int] = []
            for _ in range(30):
                statuses += await asyncio.gather(*(one() for _ in range(50)))
            return statuses

    began = time.monotonic()
    statuses = asyncio.run(flood())
    assert statuses == [200] * 1500, "the gateway kept serving"
    assert _rss_kib(gw.proc.pid) - rss < 30 * 1024, "a reader that stopped costs its buffer"
    took = time.monotonic() - began
    # Reading again, it gets every event or, past what its buffer and the sockets' held,
    # a `lost` event saying how many it missed.
    stalled.settimeout(5)
    received = b""
    while b"event: lost" not in received and received.count(b"event: request") < 1500:
        data = stalled.recv(65536)
        assert data, "the stream ended"
        received += data
    stalled.close()
    deadline = time.monotonic() + 20  # the keep-alive write or the disconnect drops it
    while gw.admin("GET", "/admin/status").json()["event_subscribers"] != 0:
        assert time.monotonic() < deadline, "a closed subscriber was not dropped"
        time.sleep(0.1)
    print(f"\n1500 requests in {took:.1f}s beside a stalled subscriber")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
