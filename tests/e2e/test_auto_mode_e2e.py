"""The gate that closes by itself, end to end: a real agent whose GPU readings come from a
file the test writes (``gpus_file``, as a machine without NVML has them) enters its gated
mode when a program that is not modelyard's holds GPU memory, stops its model, and routing
fails soft; it goes back when the program is gone; a mode a person sets wins."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServedGateway, free_port, stub_model
from tests.e2e.test_nodes_e2e import TOKEN, Agents, node, wait_for

pytestmark = pytest.mark.e2e
GIB = 1024**3
HI = [{"role": "user", "content": "hi"}]


def readings(file: Path, game: bool) -> None:
    """The GPU as another program would write it: a game holding 3 GiB, or nothing."""
    procs = [{"pid": 4242, "gpu": 0, "used": 3 * GIB, "name": "game.exe"}] if game else []
    gpu = {"index": 0, "name": "RX 7900", "memory": 24 * GIB, "used": 3 * GIB if game else 0}
    file.write_text(json.dumps({"gpus": [gpu], "processes": procs}), encoding="utf-8")


@pytest.fixture
def gamer(serve, tmp_path: Path) -> Iterator[tuple[ServedGateway, Agents, Path]]:  # type: ignore[no-untyped-def]
    port, gpus = free_port(), tmp_path / "gpus.json"
    readings(gpus, game=False)
    models = stub_model("big", node="gamer", gpus="[0]") + stub_model("small", node="server")
    config = tmp_path / "auto.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'gateway'}\n"
        "nodes:\n  server: {gpus: []}\n"
        f"  gamer:\n    url: http://127.0.0.1:{port}\n    token: {TOKEN}\n"
        f"    gpus_file: {gpus}\n    state_dir: {tmp_path / 'gamer'}\n"
        "    modes: {normal: open, gaming: {kind: gated, stop_models: true}}\n"
        "    auto_mode: {mode: gaming, other_gpu_memory: 1GiB, processes: [never-runs-*],"
        " leave_after: 1s}\n"
        f"models:\n{models}tiers:\n  chat: [big, small]\n",
        encoding="utf-8",
    )  # fmt: skip
    agents = Agents(config, tmp_path)
    try:
        agents.start("gamer", port)
        gw = serve(config)
        wait_for(lambda: node(gw, "gamer")["reachable"])
        yield gw, agents, gpus
    finally:
        agents.close()


def served(gw: ServedGateway) -> str:
    said = gw.client.chat.completions.with_raw_response.create(model="chat", messages=HI)
    return said.headers["x-modelyard-model"]


def test_a_game_closes_the_gate_and_its_end_opens_it(gamer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, _, gpus = gamer
    assert served(gw) == "big"

    readings(gpus, game=True)
    wait_for(lambda: node(gw, "gamer")["mode"] == "gaming", timeout=20)
    auto = node(gw, "gamer")["auto_mode"]
    assert auto["entered"] and "3 GiB of GPU 0" in auto["reason"], auto
    wait_for(lambda: gw.model("big")["state"] == "stopped", timeout=20)  # stop_models
    assert served(gw) == "small"  # fail-soft: big's node is gated
    log = (tmp_path / "agent-gamer.log").read_text()
    assert "node gamer: mode gaming (auto: programs other than modelyard's use 3 GiB" in log

    readings(gpus, game=False)
    wait_for(lambda: node(gw, "gamer")["mode"] == "normal", timeout=20)
    assert not node(gw, "gamer")["auto_mode"]["entered"]
    assert served(gw) == "big"

    # A person's mode wins: set by hand, it stays while the game comes and goes.
    gw.admin("PUT", "/admin/nodes/gamer/mode", json={"mode": "gaming"}).raise_for_status()
    readings(gpus, game=True)
    time.sleep(3)
    readings(gpus, game=False)
    time.sleep(5)  # more than leave_after and two rounds
    state = node(gw, "gamer")
    assert state["mode"] == "gaming" and state["auto_mode"]["manual"], state
