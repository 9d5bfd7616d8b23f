"""Routing end to end: S2's order through the gateway, real agents and real llama-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServedGateway, free_port
from tests.e2e.test_nodes_e2e import Agents, node, two_node_config, wait_for

pytestmark = pytest.mark.e2e

POLICY = """\
  cloud:
    engine: remote
    url: http://127.0.0.1:{dead}/v1
  cloud-manual:
    engine: remote
    url: http://127.0.0.1:{dead}/v1
    manual_only: true
tiers:
  small: [gemma-small]
  big: [gemma-big, gemma-small]
  deep: [cloud, cloud-manual, big]
policy:
  - name: force-big
    any:
      - header: {{X-Force-Big: "true"}}
      - model: big
      - tag: "#force_big"
    use: big
    force: true
  - name: gaming-gate
    node_mode: {{gamer: gaming}}
    use: small
  - name: long-prompt
    tokens_over: 300
    use: big
  - name: default
    use: small
"""


@pytest.fixture
def s2(serve, gemma: Path, tmp_path: Path) -> Iterator[tuple[ServedGateway, Agents]]:  # type: ignore[no-untyped-def]
    ports = {"gamer": free_port(), "lab": free_port()}
    config = two_node_config(tmp_path, gemma, ports, POLICY.format(dead=free_port()))
    agents = Agents(config, tmp_path)
    try:
        agents.start("gamer", ports["gamer"])
        agents.start("lab", ports["lab"])
        gw = serve(config)
        wait_for(lambda: node(gw, "gamer")["reachable"])
        yield gw, agents
    finally:
        agents.close()


def ask(gw: ServedGateway, text: str, model: str = "auto", **kw: Any) -> tuple[Any, dict[str, str]]:
    raw = gw.client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=4, **kw
    )
    return raw.parse(), dict(raw.headers)


def trail(gw: ServedGateway, headers: dict[str, str]) -> dict[str, Any]:
    decision = gw.admin("GET", f"/admin/decisions/{headers['x-modelyard-decision']}").json()
    assert decision["id"] == headers["x-modelyard-decision"]
    return decision  # type: ignore[no-any-return]


def test_s2_routing_order(s2) -> None:  # type: ignore[no-untyped-def]
    gw, agents = s2
    long_prompt = "Please review this code. " + "x = compute(y) + 1\n" * 60  # about 400 tokens

    listed = {m.id: m.model_extra for m in gw.client.models.list().data}
    assert listed["big"]["tier"] == ["gemma-big", "gemma-small"]  # type: ignore[index]
    assert listed["auto"]["policy"][0] == "force-big"  # type: ignore[index]

    answer, h = ask(gw, "Hello there")
    assert (answer.model, h["x-modelyard-rule"], h["x-modelyard-node"]) == (
        "gemma-small",
        "default",
        "server",
    )
    answer, h = ask(gw, long_prompt)
    assert (answer.model, h["x-modelyard-rule"]) == ("gemma-big", "long-prompt")
    assert trail(gw, h)["served_by"] == "gemma-big"

    # Replay the logged requests through a config whose default is the big tier.
    changed = gw.config.read_text().replace(
        "  - name: default\n    use: small", "  - name: default\n    use: big"
    )
    other = gw.config.with_name("other.yaml")
    other.write_text(changed)
    replay = gw.cli("route", "explain", "-c", str(other), "--replay", "20")
    assert replay.returncode == 0, replay.stderr
    assert "(default) → gemma-big (default)" in replay.stdout

    assert gw.cli("mode", "gamer", "gaming").returncode == 0
    answer, h = ask(gw, long_prompt)
    assert (answer.model, h["x-modelyard-rule"]) == ("gemma-small", "gaming-gate")
    steps = trail(gw, h)["trail"]
    assert any(s["name"] == "gaming-gate" and s["ok"] and "gaming" in s["why"] for s in steps)

    # Each force signal reaches the big model through the gate.
    _, h = ask(gw, "Hi", extra_headers={"X-Force-Big": "true"})
    assert (h["x-modelyard-model"], h["x-modelyard-rule"]) == ("gemma-big", "force-big")
    _, h = ask(gw, "Hi", model="big")
    assert (h["x-modelyard-model"], h["x-modelyard-rule"]) == ("gemma-big", "force-big")
    tagged, h = ask(gw, "Hi #force_big")
    assert (h["x-modelyard-model"], h["x-modelyard-rule"]) == ("gemma-big", "force-big")
    plain, _ = ask(gw, "Hi", model="big")
    assert tagged.usage.prompt_tokens == plain.usage.prompt_tokens  # the tag was not forwarded

    # Big node gone: fail soft to small, and say so.
    assert gw.cli("mode", "gamer", "normal").returncode == 0
    agents.kill("gamer")
    wait_for(lambda: not node(gw, "gamer")["reachable"])
    answer, h = ask(gw, long_prompt)
    assert answer.model == "gemma-small" and h["x-modelyard-rule"] == "long-prompt"
    assert "gemma-big" in h["x-modelyard-degraded"] and "unreachable" in h["x-modelyard-degraded"]


def test_remote_down_and_manual_only(s2) -> None:  # type: ignore[no-untyped-def]
    gw, _ = s2
    answer, h = ask(gw, "Think hard", model="deep")
    assert answer.model == "gemma-big"
    steps = {s["name"]: s for s in trail(gw, h)["trail"] if s["kind"] == "candidate"}
    assert not steps["cloud"]["ok"] and "remote down" in steps["cloud"]["why"]
    assert not steps["cloud-manual"]["ok"] and "manual-only" in steps["cloud-manual"]["why"]
    assert "cloud" in h["x-modelyard-degraded"]

    explained = gw.cli("route", "explain", "--model", "deep", "--prompt", "x", "--json")
    assert '"model": "gemma-big"' in explained.stdout

    # Named explicitly, the manual-only model is tried; it is down, so the answer says why.
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, "Hi", model="cloud-manual")
    assert info.value.status_code == 503 and "cloud-manual" in info.value.message


def test_the_two_node_demo_file(gemma: Path, llama_server: str, tmp_path: Path) -> None:
    """examples/demo-two-nodes.yaml as shipped: both nodes through one port, S2's policy, and
    `cloud` (a real llama-server standing in for the external API) picked for #deep."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.conftest import alive

    ports = {"gw": free_port(), "gamer": free_port(), "cloud": free_port()}
    env = {
        **os.environ,
        "MODELYARD_LISTEN": f"127.0.0.1:{ports['gw']}",
        "MODELYARD_GAMER_PORT": str(ports["gamer"]),
        "MODELYARD_STATE_DIR": str(tmp_path / "gw"),
        "MODELYARD_GAMER_STATE_DIR": str(tmp_path / "gamer"),
        "MODELYARD_DEMO_WEIGHTS": str(gemma),
        "MODELYARD_CLOUD_URL": f"http://127.0.0.1:{ports['cloud']}/v1",
    }
    demo = Path(__file__).parent.parent.parent / "examples" / "demo-two-nodes.yaml"
    procs = [
        subprocess.Popen(
            [
                llama_server,
                "-m",
                str(gemma),
                "--port",
                str(ports["cloud"]),
                "-c",
                "1024",
                "--threads",
                "2",
                "--alias",
                "cloud",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "modelyard", "agent", "-c", str(demo), "--node", "gamer"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", "-c", str(demo)],
            env=env,
            stdout=(tmp_path / "gw.log").open("wb"),
            stderr=subprocess.STDOUT,
        ),
    ]
    base = f"http://127.0.0.1:{ports['gw']}"
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
    try:

        def ready() -> bool:
            try:
                nodes = httpx.get(base + "/admin/nodes", timeout=2).json()["nodes"]
                cloud = httpx.get(f"http://127.0.0.1:{ports['cloud']}/health", timeout=2)
            except httpx.HTTPError:
                return False
            return all(n["reachable"] for n in nodes) and cloud.status_code == 200

        wait_for(ready, timeout=60)

        def cloud_seen_up() -> bool:  # the gateway polls remote URLs every 2 s
            probe = {
                "request": {"model": "auto", "messages": [{"role": "user", "content": "#deep"}]}
            }
            return httpx.post(base + "/admin/route/explain", json=probe).json()["model"] == "cloud"

        wait_for(cloud_seen_up, timeout=30)

        def ask_demo(text: str, model: str = "auto") -> dict[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=4
            )
            assert raw.parse().choices
            return dict(raw.headers)

        assert ask_demo("hello")["x-modelyard-model"] == "gemma-small"
        h = ask_demo("Please refactor this function")
        assert (h["x-modelyard-model"], h["x-modelyard-node"]) == ("gemma-big", "gamer")
        h = ask_demo("#deep what is a monad?")
        assert (h["x-modelyard-model"], h["x-modelyard-rule"]) == ("cloud", "very-complex")

        # Telemetry across the two nodes: a stream on the agent's node, then the request
        # log (llama-server's own token counts), /metrics and `modelyard top`.
        stream = client.chat.completions.create(
            model="big", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
        )
        assert sum(1 for c in stream if c.choices and c.choices[0].delta.content) >= 1
        rows = httpx.get(base + "/admin/requests?limit=10").json()["requests"]
        assert [(r["model"], r["node"]) for r in rows[:2]] == [
            ("gemma-big", "gamer"),
            ("cloud", "server"),
        ]
        streamed, plain = rows[0], rows[2]
        assert streamed["stream"] and streamed["tokens_out"] == 6 and streamed["tokens_in"] > 0
        assert plain["tokens_out"] == 4 and plain["tokens_in"] > 0  # from `usage`
        metrics = httpx.get(base + "/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
        }
        assert samples[("modelyard_node_up", (("node", "gamer"),))] == 1
        assert samples[("modelyard_node_mode", (("mode", "normal"), ("node", "gamer")))] == 1
        ok = (("model", "gemma-big"), ("outcome", "ok"))
        assert samples[("modelyard_requests_total", ok)] == 2
        assert samples[("modelyard_tokens_per_second_count", (("model", "gemma-big"),))] == 1
        declared = (("gpu", "0"), ("name", "RTX 3090"), ("node", "gamer"))
        assert samples[("modelyard_gpu_memory_total_bytes", declared)] == 24 * 1024**3
        top = subprocess.run(
            [sys.executable, "-m", "modelyard", "top", "--once", "--url", base],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "COLUMNS": "160"},
        )
        assert top.returncode == 0, top.stderr
        for text in ("server", "gamer", "RTX 3090", "gemma-small", "gemma-big", "200 ok"):
            assert text in top.stdout, top.stdout
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(60)
    assert not [p.pid for p in procs if alive(p.pid)]
