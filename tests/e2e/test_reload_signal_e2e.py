"""The gateway as systemd runs it: SIGHUP (``systemctl reload``) at any moment of its life
is never its end, and its lines, uvicorn's included, carry their journal priority."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ServedGateway, stub_model, wait_healthy, write_config

pytestmark = pytest.mark.e2e


def test_a_reload_while_the_gateway_starts_does_not_end_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, stub_model("one"))
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "JOURNAL_STREAM": "8:1234"},  # as systemd sets it
    )
    import yaml

    gw = ServedGateway(proc, f"http://{yaml.safe_load(config.read_text())['listen']}", config, log)
    try:
        deadline = time.monotonic() + 60
        while "model(s) from" not in log.read_text():  # the config is read; not yet up
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGHUP)  # before its own handler: SIGHUP's default would end it
        wait_healthy(gw.url, proc, log.read_text)
        assert proc.poll() is None

        config.write_text(config.read_text().replace("  one:", "  two:"))
        proc.send_signal(signal.SIGHUP)  # once up, SIGHUP reloads
        deadline = time.monotonic() + 30
        while "two" not in {m["name"] for m in gw.admin("GET", "/admin/models").json()["models"]}:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "<6>INFO:     Application startup complete." in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(60) in (0, -15), log.read_text()
