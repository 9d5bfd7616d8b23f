"""``sample`` events against a real gateway: every round of the cluster watch (2 s) sends
each node's CPU, memory and GPU readings to whoever subscribes, the gateway's own machine
and a remote node's (through its agent, a real process) alike."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServedGateway, free_port, stub_model, wait_healthy

pytestmark = pytest.mark.e2e
TOKEN = "sample-token"
MACHINE = {"cpu_percent", "cpus", "load1", "memory_total", "memory_available"}


def _config(tmp: Path, agent_port: int) -> Path:
    path = tmp / "modelyard.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp / 'state'}\n"
        f"nodes:\n  here: {{gpus: []}}\n"
        f"  there: {{url: 'http://127.0.0.1:{agent_port}', token: {TOKEN}, gpus: [],"
        f" state_dir: '{tmp / 'there'}'}}\n"
        f"models:\n{stub_model('slow', node='here')}",
        encoding="utf-8",
    )
    return path


def _samples(gw: ServedGateway, want: int, within: float) -> list[dict[str, Any]]:
    """The first ``want`` ``sample`` events read from ``/admin/events?kinds=sample``."""
    found: list[dict[str, Any]] = []
    began = time.monotonic()
    with httpx.stream("GET", gw.url + "/admin/events?kinds=sample", timeout=within) as stream:
        assert stream.status_code == 200
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert kind == "sample", line
                found.append(json.loads(line.removeprefix("data: ")))
                if len(found) == want:
                    break
            assert time.monotonic() - began < within, f"{len(found)} samples in {within} s"
    return found


def _is_machine(machine: dict[str, Any]) -> None:
    assert set(machine) == MACHINE, machine
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert machine["memory_total"] > 0
    assert 0 < machine["memory_available"] <= machine["memory_total"]
    assert machine["load1"] >= 0


def test_samples_reach_a_subscriber_with_each_nodes_machine(serve: Any, tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    log = tmp_path / "agent-there.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "agent", "-c", str(config), "--node", "there"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", agent, log.read_text)
        gw: ServedGateway = serve(config)

        nodes = {n["name"]: n for n in gw.admin("GET", "/admin/nodes").json()["nodes"]}
        assert set(nodes) == {"here", "there"}
        for node in nodes.values():
            _is_machine(node["machine"])

        samples = _samples(gw, 2, within=6.5)  # two rounds, 2 s apart
        assert samples[0]["kind"] == "sample" and samples[0]["seq"] < samples[1]["seq"]
        assert 1.0 < samples[1]["at"] - samples[0]["at"] < 4.0
        for sample in samples:
            by_name = {n["name"]: n for n in sample["nodes"]}
            assert set(by_name) == {"here", "there"}
            for node in by_name.values():
                assert node["reachable"] is True and node["gpus"] == []
                _is_machine(node["machine"])
                # Since the previous round (2 s): a share, as /proc/stat counted it.
                assert 0 <= node["machine"]["cpu_percent"] <= 100

        # Nobody listening: nothing is kept of them (the store keeps instance and config
        # events only), and the stream accepts no unknown kind beside them.
        events = gw.admin("GET", "/admin/status").json()["events"]
        assert not any("sample" in json.dumps(e) for e in events)
        bad = httpx.get(gw.url + "/admin/events?kinds=sample,samples", timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "kinds"

        # A node whose agent is gone: unreachable, and nothing stale of its machine.
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        deadline = time.monotonic() + 10
        while True:
            there = gw.admin("GET", "/admin/nodes").json()["nodes"][1]
            if not there["reachable"]:
                break
            assert time.monotonic() < deadline, there
            time.sleep(0.2)
        assert there["machine"] == dict.fromkeys(MACHINE)
        last = {n["name"]: n for n in _samples(gw, 1, within=4.5)[0]["nodes"]}
        assert last["there"]["reachable"] is False
        assert last["there"]["machine"] == dict.fromkeys(MACHINE)
        _is_machine(last["here"]["machine"])
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
