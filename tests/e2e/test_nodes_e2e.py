"""End to end across nodes: a gateway and two real agent processes, real llama-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ServedGateway, alive, free_port, wait_healthy

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "Say hello."}]
TOKEN = "s3cret-token"


def two_node_config(tmp: Path, gemma: Path, ports: dict[str, int], extra: str = "") -> Path:
    config = tmp / "two-nodes.yaml"
    config.write_text(
        f"""\
listen: 127.0.0.1:{free_port()}
state_dir: {tmp / "gateway"}
nodes:
  server: {{gpus: []}}
  gamer:
    url: http://127.0.0.1:{ports["gamer"]}
    token: {TOKEN}
    gpus: [{{index: 0, name: RTX 3090, memory: 24GiB, pcie_gen: 4, pcie_width: 16}}]
    modes: {{normal: open, gaming: {{kind: gated, stop_models: true}}}}
    state_dir: {tmp / "gamer"}
  lab:
    url: http://127.0.0.1:{ports["lab"]}
    token: {TOKEN}
    gpus: [{{index: 0, name: Tiny, memory: 512MiB}}]
    state_dir: {tmp / "lab"}
models:
  gemma-small:
    engine: llama.cpp
    node: server
    weights: {gemma}
    context: 1024
    args: [--threads, "2"]
  gemma-big:
    engine: llama.cpp
    node: gamer
    weights: {gemma}
    context: 1024
    args: [--threads, "2"]
  too-big:
    engine: llama.cpp
    node: lab
    weights: {gemma}
    context: 1024
{extra}"""
    )
    return config


class Agents:
    """Agent processes, started and killed by the test."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.config, self.tmp = config, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str, port: int) -> None:
        log = (self.tmp / f"agent-{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "agent", "-c", str(self.config), "--node", node],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log_file = self.tmp / f"agent-{node}.log"
        wait_healthy(f"http://127.0.0.1:{port}", self.procs[node], log_file.read_text)

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    def close(self) -> None:
        for node in list(self.procs):
            self.kill(node)


@pytest.fixture
def cluster(
    serve, gemma: Path, tmp_path: Path
) -> Iterator[tuple[ServedGateway, Agents, dict[str, int]]]:  # type: ignore[no-untyped-def]
    ports = {"gamer": free_port(), "lab": free_port()}
    config = two_node_config(tmp_path, gemma, ports)
    agents = Agents(config, tmp_path)
    try:
        agents.start("gamer", ports["gamer"])
        agents.start("lab", ports["lab"])
        gw = serve(config)
        yield gw, agents, ports
    finally:
        agents.close()


def node(gw: ServedGateway, name: str) -> dict[str, object]:
    nodes = gw.admin("GET", "/admin/nodes").json()["nodes"]
    return next(n for n in nodes if n["name"] == name)


def wait_for(check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_one_port_for_two_machines_modes_and_restarts(cluster) -> None:  # type: ignore[no-untyped-def]
    gw, agents, ports = cluster
    wait_for(lambda: node(gw, "gamer")["reachable"] and node(gw, "lab")["reachable"])
    gamer = node(gw, "gamer")
    assert gamer["mode"] == "normal" and gamer["gpus"][0]["name"] == "RTX 3090"  # type: ignore[index]

    for model in ("gemma-small", "gemma-big"):
        raw = gw.client.chat.completions.with_raw_response.create(
            model=model, messages=HELLO, max_tokens=4
        )
        assert raw.parse().model == model
    big = gw.model("gemma-big")
    assert big["node"] == "gamer" and big["state"] == "ready"
    pid = big["pid"]
    assert alive(pid) and pid not in gw.engines()  # the agent runs it, not the gateway

    # Gaming mode: the gated node takes nothing unforced, its model is stopped, and the mode
    # outlives an agent restart.
    changed = gw.cli("mode", "gamer", "gaming")
    assert changed.returncode == 0 and "gamer: gaming (gated)" in changed.stdout
    assert gw.model("gemma-big")["state"] == "stopped" and not alive(pid)
    with pytest.raises(openai.APIStatusError) as info:
        gw.client.chat.completions.create(model="gemma-big", messages=HELLO, max_tokens=4)
    assert info.value.status_code == 503 and "gated" in info.value.message
    agents.kill("gamer")
    wait_for(lambda: not node(gw, "gamer")["reachable"])
    with pytest.raises(openai.APIStatusError) as info:
        gw.client.chat.completions.create(model="gemma-big", messages=HELLO, max_tokens=4)
    assert "unreachable" in info.value.message
    assert gw.client.chat.completions.create(  # the rest keeps serving
        model="gemma-small", messages=HELLO, max_tokens=4
    ).choices
    agents.start("gamer", ports["gamer"])
    wait_for(lambda: node(gw, "gamer")["reachable"])
    assert node(gw, "gamer")["mode"] == "gaming"

    assert gw.cli("mode", "gamer", "normal").returncode == 0
    assert gw.client.chat.completions.create(
        model="gemma-big", messages=HELLO, max_tokens=4
    ).choices

    # A model that cannot fit its node's GPU is refused with the GPU, the need and the free.
    with pytest.raises(openai.APIStatusError) as info:
        gw.client.chat.completions.create(model="too-big", messages=HELLO, max_tokens=4)
    assert "does not fit on GPU 0 (Tiny) on lab" in info.value.message
    assert "512 MiB" in info.value.message


def test_agent_token_and_crash_on_a_remote_node(cluster) -> None:  # type: ignore[no-untyped-def]
    gw, _agents, ports = cluster
    url = f"http://127.0.0.1:{ports['gamer']}"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = httpx.put(url + "/agent/mode", json={"mode": "gaming"}, headers=headers)
        assert resp.status_code == 401
    status = httpx.get(url + "/agent/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status.json()["mode"] == "normal"  # nothing was done
    bad = httpx.post(url + "/agent/instances/gemma-big/start", json={"timeout": "1m"},
                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert bad.status_code == 400, bad.text
    assert (
        bad.json()["error"]["message"] == "`timeout` must be a positive number of seconds, not '1m'"
    )

    gw.client.chat.completions.create(model="gemma-big", messages=HELLO, max_tokens=4)
    pid = gw.model("gemma-big")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            gw.model("gemma-big")["instance"] == "gemma-big#2"
            and gw.model("gemma-big")["state"] == "ready"
        ),
        timeout=60,
    )
    events = gw.admin("GET", "/admin/status").json()["events"]
    assert any(e["event"] == "crashed" and e["model"] == "gemma-big" for e in events)
