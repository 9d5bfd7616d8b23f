"""A model across nodes end to end: a gateway, two real agents each running a real
ggml-rpc-server part, and the model's real llama-server using both over llama.cpp's RPC
backend. Losing a part's agent fails the instance, no rpc-server is left, and fail-soft
serves; once the agent is back the model serves again."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from modelyard.config import parse_config
from modelyard.engines.catalog import engine_for
from modelyard.engines.llamacpp import LlamaCppEngine
from modelyard.errors import StartError
from modelyard.rpc_part import find_rpc_server
from modelyard.span import _unanswered
from modelyard.supervisor import Supervisor
from tests.conftest import ServedGateway, free_port
from tests.e2e.test_nodes_e2e import TOKEN, Agents, node, wait_for

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "Say hello."}]


def rpc_servers() -> dict[int, str]:
    """Every ggml-rpc-server running on this machine: pid → its command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"ggml-rpc-server"):
                found[int(entry)] = b" ".join(argv).decode()
    return found


@pytest.fixture
def span(
    serve, gemma: Path, llama_server: str, tmp_path: Path
) -> Iterator[tuple[ServedGateway, Agents, dict[str, int]]]:  # type: ignore[no-untyped-def]
    assert find_rpc_server(llama_server), (
        "ggml-rpc-server is not beside llama-server: build llama.cpp with -DGGML_RPC=ON "
        "(scripts/setup.sh does)"
    )
    ports = {"left": free_port(), "right": free_port()}
    links = {"left": 1, "right": 10}  # Gbit/s: span: auto takes the faster
    agents_yaml = "".join(
        f"  {name}:\n    url: http://127.0.0.1:{port}\n    token: {TOKEN}\n    gpus: []\n"
        f"    state_dir: {tmp_path / name}\n    link_gbps: {links[name]}\n"
        for name, port in ports.items()
    )
    model = (
        f"    engine: llama.cpp\n    node: server\n    gpus: []\n    weights: {gemma}\n"
        '    context: 1024\n    args: [--threads, "1"]\n'
    )
    config = tmp_path / "span.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'gateway'}\n"
        f"nodes:\n  server: {{gpus: []}}\n{agents_yaml}"
        f"models:\n  gemma-split:\n{model}    span: [left, right]\n  gemma-whole:\n{model}"
        f"  gemma-auto:\n{model}    span: auto\n    memory: 300MiB\n"
        f"  gemma-huge:\n{model}    span: auto\n    memory: 64TiB\n"
        "placement: {min_link_gbps: 2.5}\n"
        "tiers:\n  split: [gemma-split, gemma-whole]\n",
        encoding="utf-8",
    )
    agents = Agents(config, tmp_path)
    try:
        for name, port in ports.items():
            agents.start(name, port)
        gw = serve(config)
        wait_for(lambda: node(gw, "left")["reachable"] and node(gw, "right")["reachable"])
        yield gw, agents, ports
    finally:
        agents.close()


def test_a_model_across_two_agents_rpc_servers(span) -> None:  # type: ignore[no-untyped-def]
    gw, agents, ports = span
    before = set(rpc_servers())
    client = gw.client

    # The agent's parts API: the token, a model with a part there, and well-formed parts.
    agent = f"http://127.0.0.1:{ports['left']}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{agent}/agent/parts/gemma-split/start", timeout=10).status_code == 401
    wrong = httpx.post(f"{agent}/agent/parts/gemma-whole/start", headers=auth, timeout=10)
    assert wrong.status_code == 404 and "has no part" in wrong.json()["error"]["message"]
    for timeout in ("soon", -1, 0, True, 1e300):
        bad = httpx.post(f"{agent}/agent/parts/gemma-split/start", headers=auth,
                         json={"timeout": timeout}, timeout=10)  # fmt: skip
        assert bad.status_code == 400 and "`timeout` must be a positive number" in bad.text
    elsewhere = httpx.post(f"{agent}/agent/instances/gemma-split/start", headers=auth,
                           json={"rpc": ["a:1"], "split": [1]}, timeout=10)  # fmt: skip
    assert elsewhere.status_code == 404  # its llama-server runs on the gateway's node
    assert set(rpc_servers()) == before  # nothing started by any of that

    said = client.chat.completions.with_raw_response.create(
        model="split", messages=HELLO, max_tokens=8
    )
    assert said.headers["x-modelyard-model"] == "gemma-split"
    assert said.parse().choices[0].message.content
    parts = {pid: argv for pid, argv in rpc_servers().items() if pid not in before}
    assert len(parts) == 2, parts  # one per agent, each on its agent's address
    assert all("--host 127.0.0.1" in argv for argv in parts.values())
    log = gw.admin("GET", "/admin/models/gemma-split/logs?lines=400").text
    started = next(line for line in log.splitlines() if "starting:" in line)
    assert "--rpc 127.0.0.1:" in started and "--tensor-split 0.5,0.5" in started, started
    # Where it runs, as placement counts it: parts in RAM hold no GPU.
    assert gw.model("gemma-split")["parts"] == {"nodes": ["left", "right"], "holds": {}}

    # The agent of one part dies (SIGKILL: no goodbye). Its rpc-server dies with it, the
    # instance fails, the other part is stopped, and the tier serves from gemma-whole.
    agents.procs.pop("left").kill()
    wait_for(lambda: not (set(parts) & set(rpc_servers())), timeout=30)
    wait_for(lambda: gw.model("gemma-split")["state"] != "ready", timeout=30)
    said = client.chat.completions.with_raw_response.create(
        model="split", messages=HELLO, max_tokens=8
    )
    assert said.headers["x-modelyard-model"] == "gemma-whole"
    decision = gw.admin("GET", f"/admin/decisions/{said.headers['x-modelyard-decision']}").json()
    turned = {s["name"]: s["why"] for s in decision["trail"] if not s["ok"]}
    assert "left" in turned["gemma-split"], turned  # unreachable, or failed naming its part
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="gemma-split", messages=HELLO, max_tokens=8)
    assert refused.value.status_code == 503 and "left" in str(refused.value)

    # The agent comes back: the model serves again, from both parts.
    agents.start("left", ports["left"])
    wait_for(lambda: node(gw, "left")["reachable"])

    def serves() -> bool:
        try:
            client.chat.completions.create(model="gemma-split", messages=HELLO, max_tokens=4)
        except openai.APIStatusError:
            return False
        return True

    wait_for(serves, timeout=60)
    assert len(set(rpc_servers()) - before) == 2


def test_span_auto_takes_the_fewest_fastest_nodes(span, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = span
    before = set(rpc_servers())
    # One node's RAM holds 300 MiB: one part, on right (10 Gbit/s) rather than left (1).
    said = gw.client.chat.completions.create(model="gemma-auto", messages=HELLO, max_tokens=4)
    assert said.choices[0].message.content is not None
    log = gw.admin("GET", "/admin/models/gemma-auto/logs?lines=400").text
    started = next(line for line in log.splitlines() if "starting:" in line)
    assert started.count("--rpc 127.0.0.1:") == 1 and "--tensor-split 1 " in started, started
    assert (tmp_path / "right" / "logs" / "gemma-auto@rpc.log").is_file()
    assert not (tmp_path / "left" / "logs" / "gemma-auto@rpc.log").exists()
    assert gw.model("gemma-auto")["parts"]["nodes"] == ["right"]
    # Stopped: its part goes with it.
    gw.admin("POST", "/admin/models/gemma-auto/stop").raise_for_status()
    wait_for(lambda: not (set(rpc_servers()) - before))
    assert gw.model("gemma-auto")["parts"] is None
    # 64 TiB fits nowhere: refused at start with what each node has free.
    with pytest.raises(openai.APIStatusError) as refused:
        gw.client.chat.completions.create(model="gemma-huge", messages=HELLO, max_tokens=4)
    message = str(refused.value)
    assert "does not fit across the open nodes: needs 64 TiB" in message
    assert "left" in message and "right" in message


async def _start_against(rpc: str, weights: Path, tmp_path: Path) -> StartError:
    """A real llama-server given one part at ``rpc``, started as a node starts it."""
    config = parse_config(
        f"nodes:\n  server: {{gpus: []}}\n  left: {{url: 'http://127.0.0.1:9', gpus: []}}\n"
        f"models:\n  m: {{engine: llama.cpp, node: server, gpus: [], span: [left], "
        f"weights: {weights}, context: 512}}\n",
        str(tmp_path / "m.yaml"),
        {},
    )
    engine = engine_for(config.models["m"], "127.0.0.1", config.engines)
    assert isinstance(engine, LlamaCppEngine)
    engine.rpc, engine.split = (rpc,), (0.5, 0.5)
    supervisor = Supervisor(tmp_path / "logs", lambda m, code: None, 1.0)
    with pytest.raises(StartError) as failed:
        await supervisor.start("m", engine, 60)
    await supervisor.close()
    return failed.value


def test_a_part_that_does_not_answer_is_named(gemma: Path, tmp_path: Path) -> None:
    # llama-server aborts on a part it cannot reach; its abort line is the one quoted (no
    # debugger's backtrace after it), and span.start names the part's node from it.
    dead = f"127.0.0.1:{free_port()}"
    failed = asyncio.run(_start_against(dead, gemma, tmp_path))
    assert f"Failed to connect to {dead}" in str(failed), failed
    named = _unanswered(failed, {dead: "left"}, "server")
    assert named is not None and named.startswith(
        f"its part on node left ({dead}) does not answer its llama-server on node server"
    )
