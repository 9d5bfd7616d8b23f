"""Faults, end to end: slow and stalled servers, cancels at each stage, 64 streams at once.

The upstream is tests/slow_upstream.py, run by the gateway as a model server; it records
every request it saw and how it ended, so each abort is seen from the server's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    SLOW_UPSTREAM,
    ServedGateway,
    access_keys,
    free_port,
    stub_log,
    stub_model,
    wait_healthy,
    write_config,
)


def _records(gw: ServedGateway, model: str, tag: str) -> list[dict[str, Any]]:
    return [r for r in stub_log(gw, model)["requests"] if r["tag"] == tag]


def _until_ended(gw: ServedGateway, model: str, tag: str, timeout: float = 10) -> dict[str, Any]:
    """The record of the request tagged ``tag`` once it ended (done or aborted)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _records(gw, model, tag)
        if found and found[-1]["outcome"] != "running":
            return found[-1]
        assert time.monotonic() < deadline, f"request {tag} did not end: {found}"
        time.sleep(0.1)


def _chat(model: str, stub: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "stub": stub,
    }


def _settled(gw: ServedGateway, model: str) -> dict[str, Any]:
    """The model's slots once every request on it is over (the slot audit)."""
    deadline = time.monotonic() + 10
    while True:
        info = gw.model(model)
        if info["in_flight"] == 0 and info["waiting"] == 0:
            return info
        assert time.monotonic() < deadline, f"{model} leaked: {info}"
        time.sleep(0.1)


@contextlib.contextmanager
def frozen(pid: int, port: int) -> Iterator[None]:
    """The server stopped (SIGSTOP) with its listen queue full: a new connection hangs."""
    os.kill(pid, signal.SIGSTOP)
    held: list[socket.socket] = []
    try:
        while True:  # fill the queue until connecting no longer completes
            s = socket.socket()
            s.settimeout(0.3)
            held.append(s)
            try:
                s.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        yield
    finally:
        for s in held:
            s.close()
        os.kill(pid, signal.SIGCONT)


def test_timeouts_first_byte_idle_connect_and_the_clients_deadline(
    serve: Any, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        stub_model("slow", timeouts="{first_byte: 1s, idle: 1s}")
        + stub_model("backup")
        + stub_model("hung", "--backlog", "1", timeouts="{connect: 1s}"),
        "tiers:\n  chat: [slow, backup]\n",
    )
    gw = serve(config)
    client = httpx.Client(base_url=gw.url, timeout=60)
    client.post("/admin/models/backup/start")
    client.post("/admin/models/slow/start")

    # First byte: nothing within 1 s → 504 naming the limit, and the server's request is
    # aborted, not left running.
    began = time.monotonic()
    r = client.post("/v1/chat/completions", json=_chat("slow", {"tag": "fb", "first_byte": 30}))
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert "no answer within 1s (timeouts.first_byte)" in r.json()["error"]["message"]
    assert time.monotonic() - began < 5
    assert _until_ended(gw, "slow", "fb")["outcome"] == "aborted"

    # Through a tier, the timeout moves the request on to the next model, which says why.
    r = client.post("/v1/chat/completions", json=_chat("chat", {"tag": "tier", "first_byte": 30}))
    assert r.status_code == 200, r.text
    assert r.headers["x-modelyard-model"] == "backup"
    assert "timeouts.first_byte" in r.headers["x-modelyard-degraded"]
    assert _until_ended(gw, "slow", "tier")["outcome"] == "aborted"

    # Idle: two chunks, then silence → the stream ends with an error event naming the limit.
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
    got: list[str] = []
    with pytest.raises(openai.APIError, match=r"slow sent nothing for 1s \(timeouts.idle\)"):
        for chunk in sdk.chat.completions.create(
            model="slow",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"stub": {"tag": "idle", "stall_after": 2, "stall": 30}},
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert got == ["t0 ", "t1 "]
    assert _until_ended(gw, "slow", "idle") | {"began": 0, "ended": 0} == {
        "tag": "idle",
        "stream": True,
        "sent": 2,
        "outcome": "aborted",
        "began": 0,
        "ended": 0,
        "cookie": None,
    }

    # Connect: a hung server whose listen queue is full → 504 after the connect limit.
    hung = client.post("/admin/models/hung/start").json()
    port = int(gw.model("hung")["upstream"].rsplit(":", 1)[1].split("/")[0])
    with frozen(gw.model("hung")["pid"], port):
        began = time.monotonic()
        r = client.post("/v1/chat/completions", json=_chat("hung", {}))
        assert r.status_code == 504, r.text
        assert "hung: no connection within 1s (timeouts.connect)" in r.text
        assert time.monotonic() - began < 5
    assert hung

    # The client's own deadline: past it nobody reads the answer, so the upstream request is
    # aborted and no other candidate is tried, though the tier has one.
    began = time.monotonic()
    r = client.post(
        "/v1/chat/completions",
        json=_chat("chat", {"tag": "deadline", "first_byte": 30}),
        headers={"x-modelyard-timeout": "0.5"},
    )
    assert r.status_code == 504, r.text
    assert "the client's deadline (x-modelyard-timeout: 0.5)" in r.json()["error"]["message"]
    assert time.monotonic() - began < 3
    assert _until_ended(gw, "slow", "deadline")["outcome"] == "aborted"
    decision = client.get(f"/admin/decisions/{r.headers['x-modelyard-decision']}").json()
    assert [(h["model"], h["why"][:9]) for h in decision["hops"]] == [
        ("slow", "slow: no "),
        ("backup", "not tried"),
    ], decision["hops"]
    assert not _records(gw, "backup", "deadline")

    # The read timeout the OpenAI SDKs send counts as the deadline of an answer not
    # streamed; a streamed one is kept alive by comments, so there it does not count.
    sdk_timeout = {"x-stainless-read-timeout": "0.5"}
    r = client.post(
        "/v1/chat/completions",
        json=_chat("slow", {"tag": "sdk", "first_byte": 0.8}),
        headers=sdk_timeout,
    )
    assert r.status_code == 504, r.text
    assert "(the client's deadline (x-stainless-read-timeout: 0.5))" in r.text
    assert _until_ended(gw, "slow", "sdk")["outcome"] == "aborted"
    r = client.post(
        "/v1/chat/completions",
        json=_chat("slow", {"tag": "sdk-stream", "first_byte": 0.8}, stream=True),
        headers=sdk_timeout,
    )
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text
    for model in ("slow", "backup"):
        _settled(gw, model)


def test_cancel_at_each_stage_reaches_the_server(serve: Any, tmp_path: Path) -> None:
    gw = serve(write_config(tmp_path, stub_model("slow", slots=1, queue=4)))
    httpx.post(gw.url + "/admin/models/slow/start", timeout=60)

    def walk_away(body: dict[str, Any], after: float, chunks: int = 0) -> None:
        """Send ``body``, read ``chunks`` lines of the answer, leave after ``after`` s."""
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                if chunks:
                    lines = r.iter_lines()  # one iterator: a dropped one closes the stream
                    data = [line for line, _ in zip(lines, range(chunks * 2), strict=False)]
                    assert sum(1 for line in data if line.startswith("data: ")) == chunks
                time.sleep(after)

    # While the server thinks (before its first byte), streamed and not.
    walk_away(_chat("slow", {"tag": "think", "first_byte": 30}, stream=True), 0.5)
    assert _until_ended(gw, "slow", "think") | {"began": 0, "ended": 0} == {
        "tag": "think",
        "stream": True,
        "sent": 0,
        "outcome": "aborted",
        "began": 0,
        "ended": 0,
        "cookie": None,
    }
    try:
        httpx.post(
            gw.url + "/v1/chat/completions",
            json=_chat("slow", {"tag": "plain", "first_byte": 30}),
            timeout=0.5,
        )
    except httpx.ReadTimeout:
        pass
    assert _until_ended(gw, "slow", "plain")["outcome"] == "aborted"

    # Mid-stream, after three chunks.
    walk_away(_chat("slow", {"tag": "mid", "chunks": 50, "gap": 0.1}, stream=True), 0, chunks=3)
    record = _until_ended(gw, "slow", "mid")
    assert record["outcome"] == "aborted" and 3 <= record["sent"] < 50, record

    # Queued behind a busy slot: it never reaches the server, and its place is given back.
    async def queued() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
            busy = asyncio.ensure_future(
                c.post("/v1/chat/completions", json=_chat("slow", {"tag": "busy", "first_byte": 2}))
            )
            await asyncio.sleep(0.5)
            waiting = asyncio.ensure_future(
                c.post("/v1/chat/completions", json=_chat("slow", {"tag": "queued"}))
            )
            await asyncio.sleep(0.5)
            assert gw.model("slow")["waiting"] == 1
            waiting.cancel()
            await asyncio.sleep(0.3)
            assert gw.model("slow")["waiting"] == 0
            assert (await busy).status_code == 200

    asyncio.run(queued())
    assert not _records(gw, "slow", "queued")
    assert _settled(gw, "slow")["in_flight"] == 0


def test_64_streams_at_once_then_every_slot_is_free(serve: Any, tmp_path: Path) -> None:
    gw = serve(write_config(tmp_path, stub_model("slow", slots=16, queue=100)))
    httpx.post(gw.url + "/admin/models/slow/start", timeout=60)
    sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)

    async def one(i: int) -> str:
        stream = await sdk.chat.completions.create(
            model="slow",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"stub": {"tag": f"s{i}", "chunks": 10, "gap": 0.02}},
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if i % 4 == 0 and len(text.split()) == 2:
                await stream.close()  # every fourth client walks away after two chunks
                return "left"
        return text

    async def all_of_them() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(all_of_them())
    full = " ".join(f"t{i}" for i in range(10)) + " "
    assert results.count("left") == 16
    assert results.count(full) == 48, results

    info = _settled(gw, "slow")
    assert (info["in_flight"], info["waiting"], info["slots"]) == (0, 0, 16)
    log = stub_log(gw, "slow")
    outcomes = {r["tag"]: r["outcome"] for r in log["requests"]}
    assert len(outcomes) == 64
    assert sorted(t for t, o in outcomes.items() if o == "aborted") == sorted(
        f"s{i}" for i in range(0, 64, 4)
    )
    assert log["peak"] <= 16, "the slots bound what reaches the server at once"
    assert log["running"] == 0


def test_priority_serves_interactive_keys_before_batch_ones(serve: Any, tmp_path: Path) -> None:
    access = access_keys(
        ("batch", "sk-batch", ""),
        ("chat", "sk-chat", "priority: 10"),
        ("ops", "sk-ops", "scopes: [admin]"),
    )
    config = write_config(tmp_path, stub_model("slow", slots=1, queue=10), access)
    gw = serve(config)
    gw.key = "sk-ops"
    gw.admin("POST", "/admin/models/slow/start").raise_for_status()

    async def scene() -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as c:

            def send(key: str, tag: str, **headers: str) -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(
                    c.post(
                        "/v1/chat/completions",
                        # The first holds the one slot long enough for every other request
                        # to be queued behind it, however slow a shared machine is.
                        json=_chat(
                            "slow", {"tag": tag, "first_byte": 2.0 if tag == "busy" else 0.3}
                        ),
                        headers={"Authorization": f"Bearer {key}", **headers},
                    )
                )

            sent = [send("sk-batch", "busy")]
            await asyncio.sleep(0.1)
            for i in range(3):
                sent.append(send("sk-batch", f"batch{i}"))
                await asyncio.sleep(0.05)
            # A deadline shorter than the line ahead: 504 from the queue, nothing sent on.
            late = send("sk-batch", "late", **{"x-modelyard-timeout": "0.4"})
            sent.append(send("sk-chat", "chat"))
            answers = await asyncio.gather(*sent)
            assert (await late).status_code == 504
            assert "not ready before the client's deadline" in (await late).text
            return [r.status_code for r in answers]

    assert asyncio.run(scene()) == [200] * 5
    order = [r["tag"] for r in stub_log(gw, "slow")["requests"]]
    assert order == ["busy", "chat", "batch0", "batch1", "batch2"], order
    _settled(gw, "slow")


def test_no_request_reaches_a_file_or_a_command_line(serve: Any, tmp_path: Path) -> None:
    """Names in requests are looked up in the config, never used as paths or arguments."""
    gw = serve(write_config(tmp_path, stub_model("slow")))
    client = httpx.Client(base_url=gw.url, timeout=30)
    for name in ("../../etc/passwd", "/bin/sh", "slow; rm -rf /", "--help", "slow\x00x"):
        r = client.post("/v1/chat/completions", json={"model": name, "messages": []})
        assert r.status_code == 404, (name, r.text)
        assert "does not exist; known models and tiers: slow" in r.json()["error"]["message"]
        r = client.get(f"/admin/models/{urllib.parse.quote(name, safe='')}/logs")
        assert r.status_code == 404, (name, r.text)
    assert gw.model("slow")["state"] == "stopped"  # nothing was started by any of it


def test_a_cookie_set_upstream_never_goes_out_with_the_next_request(
    serve: Any, tmp_path: Path
) -> None:
    """Upstream connections are shared by every client: no cookie jar between them.

    The upstream is a remote model named by host name (aiohttp's default jar keeps no
    cookies from bare IP addresses, so 127.0.0.1 would prove nothing).
    """
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(SLOW_UPSTREAM), "--port", str(port)])
    try:
        wait_healthy(f"http://localhost:{port}", upstream, lambda: "slow upstream")
        gw = serve(
            write_config(
                tmp_path, f"  cloud:\n    engine: remote\n    url: http://localhost:{port}/v1\n"
            )
        )
        client = httpx.Client(base_url=gw.url, timeout=30)
        for tag in ("alice", "bob"):
            r = client.post("/v1/chat/completions", json=_chat("cloud", {"tag": tag}))
            assert r.status_code == 200, r.text
        log = httpx.get(f"http://localhost:{port}/stub/log", timeout=10).json()
        assert [(r["tag"], r["cookie"]) for r in log["requests"]] == [
            ("alice", None),
            ("bob", None),
        ]
    finally:
        upstream.terminate()
        upstream.wait(10)
