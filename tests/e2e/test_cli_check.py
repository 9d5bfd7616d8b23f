"""``modelyard check`` and the config refusals of ``serve``, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def modelyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args], capture_output=True, text=True, timeout=60
    )


def test_check_reports_a_type_error_and_an_unknown_model_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "both.yaml"
    config.write_text(
        "scheduler:\n"
        "  drain_timeout: soon\n"
        "models:\n"
        "  a: {engine: remote, url: 'http://127.0.0.1:9/v1'}\n"
        "policy:\n"
        "  - {name: coding, use: coder}\n",
        encoding="utf-8",
    )
    run = modelyard("check", str(config))
    assert run.returncode == 1, run.stderr
    assert f"{config}:2: scheduler.drain_timeout: 'soon' is not a duration" in run.stderr
    assert f"{config}:6: policy[0].use: 'coder' is neither a model nor a tier" in run.stderr


def test_check_on_a_file_not_in_utf8_names_its_line(tmp_path: Path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"listen: 127.0.0.1:8000\nmodels:\n  caf\xe9: {engine: remote}\n")
    run = modelyard("check", str(config))
    assert run.returncode == 1, run.stderr
    assert f"{config}:3: (top): not UTF-8: byte 0xe9" in run.stderr
    assert "Traceback" not in run.stderr


def test_serve_on_a_lan_address_without_keys_names_the_key_command(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nmodels:\n  a: {{engine: remote, url: 'http://127.0.0.1:9/v1'}}\n",
        encoding="utf-8",
    )
    run = modelyard("serve", "-c", str(config), "--listen", f"0.0.0.0:{free_port()}")
    assert run.returncode == 2, run.stderr
    assert "with no API keys" in run.stderr and "modelyard key NAME" in run.stderr


def test_check_warns_of_a_lan_address_serve_would_refuse(tmp_path: Path) -> None:
    models = "models:\n  a: {engine: remote, url: 'http://127.0.0.1:9/v1'}\n"
    for listen, extra, warned in [
        ("0.0.0.0:8000", "", True),
        ("127.0.0.1:8000", "", False),
        ("0.0.0.0:8000", "access: {allow_open_lan: true}\n", False),
        ("0.0.0.0:8000", "access: {keys: [{name: me, key: sk-1}]}\n", False),
    ]:
        config = tmp_path / "lan.yaml"
        config.write_text(f"listen: {listen}\n{extra}{models}", encoding="utf-8")
        run = modelyard("check", str(config))
        assert run.returncode == 0, run.stderr  # valid: a warning, not an error
        said = "listen: 0.0.0.0:8000 with no API keys" in run.stdout
        assert said == warned, (listen, extra, run.stdout)
        assert ("`modelyard serve` refuses it" in run.stdout) == warned
