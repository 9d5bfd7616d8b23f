"""A storm of clients that all leave at once, round after round: no place is ever lost.

Each round sends 24 requests (a third not streamed) to a model with 2 slots, then every
client hangs up at the same instant, at a different moment each round: while queued,
just as a slot is granted, while its model's first byte is awaited, mid-stream, and while
a streamed request waits out loud (keep-alive comments, past one second). After every
round the slot audit must be zero: nothing in flight, nothing waiting, and the gateway's
own audit (a place held by a finished request) found nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.conftest import ServedGateway, stub_log, stub_model, write_config

pytestmark = pytest.mark.e2e

ROUNDS = 50
CLIENTS = 24


def _audit(gw: ServedGateway, round_no: int) -> dict[str, Any]:
    """The slot audit once the round's requests are over (bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        status = gw.admin("GET", "/admin/status").json()
        model = next(m for m in status["models"] if m["name"] == "slow")
        if model["in_flight"] == 0 and model["waiting"] == 0:
            return dict(status["slot_audit"])
        assert time.monotonic() < deadline, f"round {round_no}: a place leaked: {model}"
        time.sleep(0.05)


async def _round(url: str, leave_at: float, rng: random.Random) -> tuple[int, int]:
    """One round; returns how many requests were sent whole (the gateway must log each of
    them), and how many were still going when their clients left."""
    sent = 0

    async def body_sent(*_: Any) -> None:
        nonlocal sent
        sent += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(body_sent)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:

        async def one(i: int) -> None:
            body = {
                "model": "slow",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": i % 3 != 0,
                "stub": {
                    "tag": f"r{i}",
                    "first_byte": rng.uniform(0, 0.3),
                    "chunks": 4,
                    "gap": 0.05,
                },
            }
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                await resp.read()

        tasks = [asyncio.ensure_future(one(i)) for i in range(CLIENTS)]
        await asyncio.sleep(leave_at)
        going = sum(1 for t in tasks if not t.done())
        for t in tasks:
            t.cancel()  # every client hangs up at once: aiohttp closes each connection
        await asyncio.gather(*tasks, return_exceptions=True)
        return sent, going


def test_every_client_leaving_at_once_never_loses_a_place(serve: Any, tmp_path: Path) -> None:
    gw = serve(write_config(tmp_path, stub_model("slow", slots=2, queue=100)))
    assert gw.admin("POST", "/admin/models/slow/start").status_code == 200
    rng = random.Random(11)
    cut_short = sent = 0
    for n in range(ROUNDS):
        # From queued-only moments to past the keep-alive's first comment (1 s).
        leave_at = 0.02 + (n % 10) * 0.16 + rng.uniform(0, 0.02)
        whole, going = asyncio.run(_round(gw.url, leave_at, rng))
        sent, cut_short = sent + whole, cut_short + going
        audit = _audit(gw, n)
        assert audit == {"leaks_found": [], "leaks_total": 0}, f"round {n}"
    # Each request sent whole leaves exactly one row, however it ended. (A client that
    # leaves in the first moments may not have sent its request at all.)
    assert sent > ROUNDS * CLIENTS * 0.9
    deadline = time.monotonic() + 10
    while (logged := _requests_logged(gw)) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged == sent
    print(f"\nstorm: {ROUNDS} rounds, {sent} requests sent whole, {cut_short} cut short, 0 leaks")
    assert cut_short > ROUNDS * CLIENTS // 2, "most clients must leave mid-request"
    log = stub_log(gw, "slow")
    assert log["peak"] <= 2 and log["running"] == 0
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'modelyard_slot_leaks_total{model="slow"} 0.0' in metrics


def _requests_logged(gw: ServedGateway) -> int:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("modelyard_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
