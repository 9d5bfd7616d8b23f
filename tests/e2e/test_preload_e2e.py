"""Warm by default, through a real gateway and real engine processes: a preload model is
ready before any request, stops when its node enters a mode that stops models and comes
back by itself when the node leaves it; a preload that cannot start is retried with the
backoff, then given up, and says so."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ServedGateway, stub_model, write_config

pytestmark = pytest.mark.e2e

NODES = """\
nodes:
  local:
    gpus: []
    modes: {normal: open, gaming: {kind: gated, stop_models: true}}
scheduler: {restart_backoff: 0.2, max_restarts: 2}
"""
BROKEN = f"""\
  broken:
    engine: command
    command: [{sys.executable}, -c, "raise SystemExit(3)", "{{port}}"]
    preload: true
"""


def preload_events(gw: ServedGateway) -> list[str]:
    events = gw.admin("GET", "/admin/status").json()["events"]
    return [e["detail"] for e in events if e["event"] == "preload"]


def test_preload_comes_up_and_back_and_a_broken_one_gives_up(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models = stub_model("warm", preload="true") + stub_model("cold") + BROKEN
    gw: ServedGateway = serve(write_config(tmp_path, models, NODES))

    gw.wait_state("warm", "ready", timeout=30)  # no request asked for it
    assert gw.admin("GET", "/admin/requests").json()["requests"] == []
    assert gw.model("cold")["state"] == "stopped"  # not marked: started on demand only

    gw.admin("PUT", "/admin/nodes/local/mode", json={"mode": "gaming"}).raise_for_status()
    gw.wait_state("warm", "stopped", timeout=30)
    time.sleep(2.5)  # a round of the watch: gated, nothing comes back
    assert gw.model("warm")["state"] == "stopped"
    gw.admin("PUT", "/admin/nodes/local/mode", json={"mode": "normal"}).raise_for_status()
    gw.wait_state("warm", "ready", timeout=30)

    # broken: tried, tried again after the backoff, then given up, each said.
    deadline = time.monotonic() + 30
    while not any("gave up" in d for d in preload_events(gw)):
        assert time.monotonic() < deadline, preload_events(gw)
        time.sleep(0.3)
    said = preload_events(gw)
    assert any("tried again in 0.2s" in d for d in said), said
    assert gw.model("broken")["state"] == "failed"
    assert any("preloaded" == d for d in said)  # warm's, each time it came up
