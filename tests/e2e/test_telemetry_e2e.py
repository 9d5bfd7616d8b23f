"""Telemetry end to end: /metrics parsed as Prometheus text, the request log, modelyard top."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServedGateway, access_keys, stub_model, write_config

MARK = "zebra-quartz-42"  # in every prompt: it must never reach the metrics or the store
SECRET = "sk-alice-secret-123"


def scrape(gw: ServedGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels."""
    r = gw.admin("GET", "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert MARK not in r.text and SECRET not in r.text
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_request_log_and_top(serve: Any, tmp_path: Path) -> None:
    access = access_keys(("alice", SECRET, ""), ("ops", "sk-ops", "scopes: [admin]"))
    gw = serve(write_config(tmp_path, stub_model("slow", timeouts="{first_byte: 1s}"), access))
    gw.key = "sk-ops"
    alice = httpx.Client(base_url=gw.url, timeout=30, headers={"Authorization": f"Bearer {SECRET}"})

    def chat(stream: bool = False, **stub: Any) -> httpx.Response:
        body = {
            "model": "slow",
            "messages": [{"role": "user", "content": f"{MARK} hello"}],
            "stream": stream,
            "stub": stub,
        }
        return alice.post("/v1/chat/completions", json=body)

    for _ in range(3):
        assert chat().status_code == 200
    for _ in range(2):
        assert chat(stream=True).status_code == 200
    assert chat(first_byte=5).status_code == 504
    unknown = alice.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert unknown.status_code == 404
    assert alice.post("/v1/chat/completions", content=b"{not json").status_code == 400

    m = scrape(gw)
    assert m[("modelyard_requests_total", (("model", "slow"), ("outcome", "ok")))] == 5
    assert m[("modelyard_requests_total", (("model", "slow"), ("outcome", "timeout")))] == 1
    assert m[("modelyard_requests_total", (("model", "-"), ("outcome", "rejected")))] == 2
    assert m[("modelyard_time_to_first_byte_seconds_count", (("model", "slow"),))] == 5
    assert m[("modelyard_tokens_total", (("direction", "in"), ("model", "slow")))] == 12
    assert m[("modelyard_tokens_total", (("direction", "out"), ("model", "slow")))] == 24
    assert m[("modelyard_gateway_overhead_seconds_count", ())] == 5
    assert m[("modelyard_decisions_total", (("rule", "-"),))] == 6
    ready = (("model", "slow"), ("node", "local"), ("state", "ready"))
    assert m[("modelyard_instance_state", ready)] == 1
    assert m[("modelyard_slots_in_use", (("model", "slow"),))] == 0
    assert m[("modelyard_queue_depth", (("model", "slow"),))] == 0
    assert m[("modelyard_node_up", (("node", "local"),))] == 1
    assert m[("modelyard_instance_restarts_total", (("model", "slow"),))] == 0
    # By node (this stub runs on no GPU: no per-GPU figures), and in /admin/status for top.
    assert m[("modelyard_node_time_to_first_token_seconds_count", (("node", "local"),))] == 5
    assert not any(n.startswith("modelyard_gpu_time_to_first") for n, _ in m)
    speeds = gw.admin("GET", "/admin/status").json()["speeds"]
    assert [(s["node"], s["answers"]) for s in speeds["nodes"]] == [("local", 5)]
    assert speeds["nodes"][0]["ttft_s"] > 0
    # Each request counted once, whatever path it took.
    assert sum(v for (n, _), v in m.items() if n == "modelyard_requests_total") == 8

    # /metrics is for operators: a user key is refused, no key is refused.
    assert alice.get("/metrics").status_code == 403
    assert httpx.get(gw.url + "/metrics").status_code == 401

    log = gw.admin("GET", "/admin/requests?limit=100").json()["requests"]
    assert len(log) == 8
    assert {r["key"] for r in log} == {"alice"}
    timeout = gw.admin("GET", "/admin/requests?outcome=timeout").json()["requests"]
    assert len(timeout) == 1 and "timeouts.first_byte" in timeout[0]["error"]
    assert timeout[0]["decision"] and timeout[0]["model"] == "slow"
    ok = gw.admin("GET", "/admin/requests?status=200&model=slow&since=1h").json()["requests"]
    assert len(ok) == 5
    plain = [r for r in ok if not r["stream"]]
    assert all((r["tokens_in"], r["tokens_out"]) == (4, 8) for r in plain), plain
    assert all(0 < r["ttft_s"] <= r["duration_s"] for r in ok)
    rejected = gw.admin("GET", "/admin/requests?outcome=rejected").json()["requests"]
    assert sorted((r["status"], r["asked"]) for r in rejected) == [(400, ""), (404, "nope")]
    bad = gw.admin("GET", "/admin/requests?colour=red")
    assert bad.status_code == 400 and "filters: key, asked" in bad.json()["error"]["message"]
    assert gw.admin("GET", "/admin/requests?since=yesterday").status_code == 400

    # Neither the prompt nor the key is stored (keep_prompts is off by default).
    decision = gw.admin("GET", f"/admin/decisions/{ok[0]['decision']}").json()
    assert decision["features"]["text_kept"] is False
    state = tmp_path / "state"
    for f in state.glob("modelyard.db*"):
        data = f.read_bytes()
        assert MARK.encode() not in data and SECRET.encode() not in data, f

    top = subprocess.run(
        [sys.executable, "-m", "modelyard", "top", "--once", "--url", gw.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MODELYARD_API_KEY": "sk-ops", "COLUMNS": "160"},
    )
    assert top.returncode == 0, top.stderr
    for text in ("nodes", "local", "instances", "slow", "ready", "recent requests", "alice",
                 "speed", "TTFT", "TOK/S"):  # fmt: skip
        assert text in top.stdout, top.stdout
    assert "504 timeout" in top.stdout and "404 rejected" in top.stdout
