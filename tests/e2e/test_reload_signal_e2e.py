"""SIGHUP (``systemctl reload``) at any moment of the gateway's life: never its end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ServedGateway, stub_model, wait_healthy, write_config

pytestmark = pytest.mark.e2e


def test_a_reload_before_the_gateway_listens_does_not_end_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, stub_model("one"))
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
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
    finally:
        proc.terminate()
        assert proc.wait(60) in (0, -15), log.read_text()
