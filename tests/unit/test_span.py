"""A model across nodes at its start (modelyard.span): the split, what it records it holds,
and the refusals that name each node (nodes stood in for: only what span reads of them)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.config import parse_config
from modelyard.engines.base import Upstream
from modelyard.errors import StartError
from modelyard.lifecycle import NodeView
from modelyard.machine import Machine
from modelyard.placement import Gpu, Need, Resident
from modelyard.rpc_part import Parts
from modelyard.span import Placements, room, start, tensor_split

GIB = 1024**3
CONFIG = """\
nodes:
  server: {{address: 10.0.0.1, gpus: [{{index: 0, memory: 8GiB}}], reserve: 1GiB}}
  gamer: {{url: "http://10.0.0.2:9100", gpus: [{{index: 0, memory: 24GiB}}], link_gbps: 1}}
  lab: {{url: "http://10.0.0.3:9100", gpus: [], link_gbps: 10}}
models:
  big: {{engine: llama.cpp, weights: /m.gguf, node: gamer, span: {span}, memory: {memory}}}
"""


class Node:
    """What span reads of a node: its view, GPUs and machine; starts are not reached."""

    def __init__(self, name: str, gpus: list[Gpu], ram: int = 0, up: bool = True) -> None:
        self.name, self._gpus, self._ram, self._up = name, gpus, ram, up

    def view(self) -> NodeView:
        return NodeView(self.name, "open", "open", self._up)

    def gpus(self) -> list[Gpu]:
        return self._gpus

    def machine(self) -> Machine:
        return Machine(memory_available=self._ram)

    async def start_part(self, model: str, timeout: float) -> str:
        raise AssertionError("nothing starts when it cannot fit")


def nodes(server_up: bool = True) -> dict[str, Any]:
    return {
        "server": Node("server", [Gpu("server", 0, "3070", 8 * GIB, 3 * GIB)], up=server_up),
        "gamer": Node("gamer", [Gpu("gamer", 0, "3090", 24 * GIB, 8 * GIB)]),
        "lab": Node("lab", [], ram=12 * GIB),
    }


def refused(span: str, memory: str, server_up: bool = True) -> str:
    config = parse_config(CONFIG.format(span=span, memory=memory), "/etc/m.yaml", {})
    with pytest.raises(StartError) as caught:
        asyncio.run(start(nodes(server_up), config, "big", "gamer", 10, {}))
    return str(caught.value)


def test_the_split_weights_each_device_by_what_it_may_take() -> None:
    server = room(nodes()["server"].gpus(), None, GIB)  # 8 - 3 used - 1 reserved
    lab = room([], Machine(memory_available=12 * GIB), 0)  # no GPU: its RAM
    own = room(nodes()["gamer"].gpus(), None, 0)  # 24 - 8 used
    assert (server, lab, own) == ([4 * GIB], [12 * GIB], [16 * GIB])
    assert tensor_split([server, lab], own) == (0.125, 0.375, 0.5)


def test_a_named_span_that_cannot_fit_names_each_node_s_share_and_free_memory() -> None:
    # 25 GiB fits the declared GPUs (check passes); with what is used now, and the server's
    # reserve kept, it does not.
    said = refused("[server]", "25GiB")
    assert said.startswith("does not fit across its nodes: needs 25 GiB: server "), said
    assert " of 4 GiB free, gamer " in said and said.endswith(" of 16 GiB free"), said


def test_a_part_s_node_that_is_away_is_named() -> None:
    assert refused("[server]", "20GiB", server_up=False) == (
        "its part on node server cannot start: the node is unreachable"
    )


def test_span_auto_that_cannot_fit_says_what_each_open_node_has() -> None:
    said = refused("auto", "64GiB")
    assert said.startswith("does not fit across the open nodes: needs 64 GiB; its node has 16 GiB")
    assert "server 4 GiB" in said and "lab 12 GiB" in said


class Up(Node):
    """A node whose part and llama-server start: it keeps what it was given."""

    def __init__(self, name: str, gpus: list[Gpu]) -> None:
        super().__init__(name, gpus)
        self.given: Parts | None = None

    async def start_part(self, model: str, timeout: float) -> str:
        return f"{self.name}:50052"

    def need(self, model: str) -> None:
        return None  # its memory is declared

    async def start(self, model: str, timeout: float, parts: Parts) -> tuple[Upstream, int]:
        self.given = parts
        return Upstream("http://gamer:8080"), 1


def test_it_leaves_what_other_models_hold_and_records_what_it_holds_on_each_gpu() -> None:
    config = parse_config(CONFIG.format(span="[server]", memory="14GiB"), "/etc/m.yaml", {})
    server = Up("server", [Gpu("server", 0, "3070", 8 * GIB)])  # declared: no use read
    gamer = Up("gamer", [Gpu("gamer", 0, "3090", 24 * GIB)])
    small = Resident("small", False, None, Need("server", {0: 3 * GIB}))  # runs on the server
    chosen: Placements = {}
    asyncio.run(
        start({"server": server, "gamer": gamer}, config, "big", "gamer", 10, chosen, [small])
    )
    # The server's GPU has 8 GiB, less its 1 GiB reserve and the 3 GiB small holds: 4 of 28.
    assert gamer.given == Parts(("server:50052",), (0.1429, 0.8571))
    placed = chosen["big"]
    assert placed.nodes == ("server",)
    assert [(n.node, n.per_gpu) for n in placed.needs] == [
        ("server", {0: int(14 * GIB * 0.1429)}),
        ("gamer", {0: int(14 * GIB * 0.8571)}),
    ]
    assert placed.needs[0].how == "its share of 14 GiB by the split"


@pytest.mark.parametrize(
    ("span", "floor", "slow"),
    [
        pytest.param("[lab]", 20, ["lab"], id="a part's said link under the minimum"),
        pytest.param("[lab]", 2.5, [], id="fast enough"),
        pytest.param("[server, lab]", 20, ["lab"], id="a link not said is not warned of"),
        pytest.param("auto", 20, [], id="auto: warned of at start, once chosen"),
    ],
)
def test_check_warns_of_a_named_part_on_a_slow_link(
    span: str, floor: float, slow: list[str]
) -> None:
    text = CONFIG.format(span=span, memory="20GiB") + f"placement: {{min_link_gbps: {floor}}}\n"
    config = parse_config(text, "/etc/m.yaml", {})
    said = [w for w in config.warnings if "Gbit/s" in w]
    assert [w.split("its part on node ")[1].split(" ")[0] for w in said] == slow
    assert all(f"slower than placement.min_link_gbps {floor:g}" in w for w in said)


class Unreached(Up):
    """A node whose llama-server cannot reach the part it was given (ggml-rpc aborts)."""

    async def start(self, model: str, timeout: float, parts: Parts) -> tuple[Upstream, int]:
        tail = [f"ggml-rpc.cpp:547: Failed to connect to {parts.rpc[0]}"]
        raise StartError("exited with signal SIGABRT while starting", tail)

    async def stop_part(self, model: str, reason: str) -> None:
        self.stopped = reason


def test_a_part_its_llama_server_cannot_reach_is_named_and_stopped() -> None:
    config = parse_config(CONFIG.format(span="[server]", memory="14GiB"), "/etc/m.yaml", {})
    server = Unreached("server", [Gpu("server", 0, "3070", 8 * GIB)])
    gamer = Unreached("gamer", [Gpu("gamer", 0, "3090", 24 * GIB)])
    chosen: Placements = {}
    with pytest.raises(StartError) as failed:
        asyncio.run(start({"server": server, "gamer": gamer}, config, "big", "gamer", 10, chosen))
    assert str(failed.value).startswith(
        "its part on node server (server:50052) does not answer its llama-server on node "
        "gamer: nothing reaches that address from there"
    ), failed.value
    assert "Failed to connect to server:50052" in str(failed.value)  # its last line, quoted
    assert server.stopped == "its llama-server failed to start" and chosen == {}
