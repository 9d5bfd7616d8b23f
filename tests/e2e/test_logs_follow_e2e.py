"""``GET /admin/models/NAME/logs?follow=1`` against a real gateway (and a real agent): the
last lines, then each new one, through a restart, on one stream; a client that leaves
leaves no follower behind (``log_followers`` in ``GET /admin/status``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from modelyard.agent import create_agent_app
from modelyard.config import load_config
from modelyard.nodes import RemoteNode
from tests.conftest import ServedGateway, free_port, stub_model, write_config
from tests.e2e.test_nodes_e2e import Agents

pytestmark = pytest.mark.e2e
TOKEN = "log-token"


def _followers(gw: ServedGateway) -> int:
    return int(gw.admin("GET", "/admin/status").json()["log_followers"])


def _wait_followers(gw: ServedGateway, want: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (now := _followers(gw)) != want:
        assert time.monotonic() < deadline, f"log_followers stayed {now}, not {want}"
        time.sleep(0.1)


def _data_until(lines: Iterator[str], found: Callable[[str], bool], seen: list[str]) -> str:
    """Read SSE lines into ``seen`` (the data of each) until one satisfies ``found``."""
    for line in lines:
        if line.startswith("data: "):
            seen.append(line.removeprefix("data: "))
            if found(seen[-1]):
                return seen[-1]
    raise AssertionError(f"the stream ended; it said: {seen}")


def _follow_through_a_restart(gw: ServedGateway, model: str) -> None:
    first = gw.admin("POST", f"/admin/models/{model}/start").json()["pid"]
    url = f"{gw.url}/admin/models/{model}/logs?follow=1&lines=50"
    seen: list[str] = []
    with httpx.stream("GET", url, timeout=30) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        # The tail first: this start's lines, up to its "ready" note.
        _data_until(lines, lambda s: f"(pid {first})" in s, seen)
        assert any("starting: " in s for s in seen), seen
        _wait_followers(gw, 1)

        restarted = gw.admin("POST", f"/admin/models/{model}/restart")
        assert restarted.status_code == 200, restarted.text
        second = restarted.json()["pid"]
        assert second != first
        # The same stream carries the stop, the new start and its ready line.
        before = len(seen)
        _data_until(lines, lambda s: "ready on port" in s and f"(pid {second})" in s, seen)
        after = seen[before:]
        assert any("stopping: " in s for s in after), after
        assert any("starting: " in s for s in after), after
        assert _followers(gw) == 1
    _wait_followers(gw, 0)  # the client left: its follower went with it


def test_a_local_model_log_is_followed_through_a_restart(serve: Any, tmp_path: Path) -> None:
    gw: ServedGateway = serve(write_config(tmp_path, stub_model("slow")))
    assert _followers(gw) == 0
    _follow_through_a_restart(gw, "slow")

    # A follower that connects and leaves at once, before reading, leaves nothing either.
    for _ in range(5):
        with httpx.stream("GET", f"{gw.url}/admin/models/slow/logs?follow=1", timeout=30) as s:
            assert s.status_code == 200
    _wait_followers(gw, 0)

    # The tail without follow is as before; follow keeps its checks.
    plain = gw.admin("GET", "/admin/models/slow/logs?lines=5")
    assert plain.status_code == 200 and "ready on port" in plain.text
    bad = gw.admin("GET", "/admin/models/slow/logs?follow=1&lines=0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lines"
    missing = gw.admin("GET", "/admin/models/nope/logs?follow=1")
    assert missing.status_code == 404


def test_two_followers_each_get_every_new_line(serve: Any, tmp_path: Path) -> None:
    gw: ServedGateway = serve(write_config(tmp_path, stub_model("slow")))
    assert gw.admin("POST", "/admin/models/slow/start").status_code == 200
    url = f"{gw.url}/admin/models/slow/logs?follow=1&lines=1"
    with httpx.stream("GET", url, timeout=30) as a, httpx.stream("GET", url, timeout=30) as b:
        la, lb = a.iter_lines(), b.iter_lines()
        seen_a: list[str] = []
        seen_b: list[str] = []
        _data_until(la, lambda s: "ready on port" in s, seen_a)  # the tail: one line
        _data_until(lb, lambda s: "ready on port" in s, seen_b)
        _wait_followers(gw, 2)
        assert gw.admin("POST", "/admin/models/slow/stop").status_code == 200
        stopped = re.compile(r"stopped \(exit code")
        _data_until(la, lambda s: bool(stopped.search(s)), seen_a)
        _data_until(lb, lambda s: bool(stopped.search(s)), seen_b)
        assert seen_a[1:] == seen_b[1:] and any("stopping: " in s for s in seen_a)
    _wait_followers(gw, 0)


def _far_config(tmp_path: Path, port: int) -> Path:
    """A gateway here and the model on node ``far``, an agent on ``port``."""
    config = tmp_path / "modelyard.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'gateway'}\n"
        "nodes:\n  here: {gpus: []}\n"
        f"  far:\n    url: http://127.0.0.1:{port}\n    token: {TOKEN}\n    gpus: []\n"
        f"    state_dir: {tmp_path / 'far'}\n"
        "models:\n" + stub_model("far-slow", node="far"),
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def serving(app: Any, port: int) -> Iterator[None]:
    """An agent's app served in this process (its state readable here), on ``port``."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(30)


async def reached(config: Any) -> RemoteNode:
    """The gateway's side of node ``far``, once its agent answers."""
    node = RemoteNode("far", config, lambda m, why: None, lambda m, why: None)
    for _ in range(100):
        await node.refresh()
        if node.reachable:
            break
        await asyncio.sleep(0.1)
    return node


def _reachable(gw: ServedGateway, node: str) -> bool:
    nodes = gw.admin("GET", "/admin/nodes").json()["nodes"]
    return bool(next(n for n in nodes if n["name"] == node)["reachable"])


def test_a_model_on_an_agent_is_followed_through_the_gateway(serve: Any, tmp_path: Path) -> None:
    port = free_port()
    config = _far_config(tmp_path, port)
    agents = Agents(config, tmp_path)
    try:
        agents.start("far", port)
        gw: ServedGateway = serve(config)
        deadline = time.monotonic() + 30
        while not _reachable(gw, "far"):
            assert time.monotonic() < deadline, "the agent never answered the gateway"
            time.sleep(0.2)
        # The agent's own endpoint wants its token.
        agent_logs = f"http://127.0.0.1:{port}/agent/instances/far-slow/logs?follow=1"
        assert httpx.get(agent_logs, timeout=10).status_code == 401
        _follow_through_a_restart(gw, "far-slow")
        agents.kill("far")  # an agent that is gone: a clear refusal, not a hung stream
        gone = gw.admin("GET", "/admin/models/far-slow/logs?follow=1")
        assert gone.status_code == 503 and "unreachable" in gone.json()["error"]["message"]
        assert _followers(gw) == 0
    finally:
        agents.close()


def test_a_relay_that_is_closed_lets_go_of_the_agents_follower(tmp_path: Path) -> None:
    """The agent in this process (to read its logs' followers), the gateway's side of it
    (``RemoteNode``) driven directly: closing the relay closes the agent's stream."""
    port = free_port()
    config = load_config(_far_config(tmp_path, port))
    app = create_agent_app(config, "far")
    agent = app.state.agent

    async def scenario() -> None:
        node = await reached(config)
        try:
            _, pid = await node.start("far-slow", 30)
            stream = node.follow_logs("far-slow", 10)
            assert await anext(stream) is None  # open: the agent answered
            assert node.relays == 1 and agent.supervisor.log("far-slow").followers == 1
            async for item in stream:
                if isinstance(item, str) and f"(pid {pid})" in item:
                    break
            await stream.aclose()
            assert node.relays == 0
            for _ in range(100):  # the agent sees the connection go, and lets go
                if agent.supervisor.log("far-slow").followers == 0:
                    break
                await asyncio.sleep(0.05)
            assert agent.supervisor.log("far-slow").followers == 0
            await node.stop("far-slow", "test over")
        finally:
            await node.close()

    with serving(app, port):
        asyncio.run(scenario())
