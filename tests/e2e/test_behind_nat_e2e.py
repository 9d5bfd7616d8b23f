"""A node behind a NAT (WSL2's): ``engine_ports``, engines listen on the ports of the range
only (what the NAT's forwarding names ahead), the first free ones, and a full range is a
start error that says so; ``engine_listen``, engines bind inside the NAT and are reached at
the node's outside address. Real processes under a real Supervisor."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from modelyard.config import parse_config
from modelyard.errors import StartError
from modelyard.nodes import LocalNode
from modelyard.store import Store
from modelyard.supervisor import Supervisor, free_port
from tests.conftest import free_port as any_free_port
from tests.e2e.test_reaper import command_engine

pytestmark = pytest.mark.e2e


def _run() -> range:
    """Three ports in a row, free now."""
    for _ in range(50):
        base = any_free_port()
        try:
            for port in range(base, base + 3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return range(base, base + 3)
    raise AssertionError("no three free ports in a row")


def test_a_range_s_first_free_port_skips_ours_and_others() -> None:
    ports = _run()
    with socket.socket() as held:  # another program holds the first
        held.bind(("127.0.0.1", ports[0]))
        held.listen()
        assert free_port(set(), ports) == ports[1]
        assert free_port({ports[1]}, ports) == ports[2]  # handed to an engine of ours
        with pytest.raises(StartError, match=r"no free port in engine_ports \d+-\d+"):
            free_port({ports[1], ports[2]}, ports)


async def test_engines_listen_in_the_node_s_range(tmp_path: Path) -> None:
    ports = _run()
    sup = Supervisor(tmp_path / "logs", lambda m, code: None, 0.5, ports=ports[:2])
    try:
        first, _ = await sup.start("a", command_engine(), 30)
        second, _ = await sup.start("b", command_engine(), 30)
        assert [first.base_url, second.base_url] == [f"http://127.0.0.1:{p}/v1" for p in ports[:2]]
        with pytest.raises(StartError, match="no free port in engine_ports") as full:
            await sup.start("c", command_engine(), 30)
        assert f"{ports[0]}-{ports[1]}" in str(full.value)
    finally:
        await sup.close()


def _binds_every_address(pid: int, port: int) -> bool:
    """Whether ``pid`` was told ``--host 0.0.0.0`` and ``port`` is bound to 0.0.0.0."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    told = argv[argv.index(b"--host") + 1] == b"0.0.0.0"
    return told and f"00000000:{port:04X}" in Path("/proc/net/tcp").read_text()


async def test_an_engine_binds_the_node_s_engine_listen_and_is_reached_at_its_host(
    gemma: Path, tmp_path: Path
) -> None:
    # Inside WSL2's NAT: llama-server binds 0.0.0.0 (the Linux side), is advertised at the
    # url's address (Windows', where a portproxy forwards its port), and is checked from
    # its own node at loopback.
    config = parse_config(
        "nodes:\n  here: {gpus: []}\n"
        "  gamer: {url: 'http://127.0.0.1:9100', gpus: [], engine_listen: 0.0.0.0}\n"
        f"models:\n  m: {{engine: llama.cpp, node: gamer, gpus: [], weights: {gemma}, "
        "context: 512}\n",
        str(tmp_path / "m.yaml"),
        {},
    )
    node = LocalNode(
        "gamer",
        config,
        Store(tmp_path / "s.db"),
        Supervisor(tmp_path / "logs", lambda m, c: None, 1.0),
        "127.0.0.1",
    )
    try:
        upstream, pid = await node.start("m", 60)
        assert upstream.base_url.startswith("http://127.0.0.1:")
        port = int(upstream.base_url.rsplit(":", 1)[1].split("/")[0])
        assert pid is not None and _binds_every_address(pid, port)
    finally:
        await node.close()
