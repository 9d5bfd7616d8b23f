"""Access: API keys, scopes, per-key models and rates, body limits, and the LAN guard."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ServedGateway, free_port, write_config

USER, ADMIN, LIMITED = "my-user-key", "my-admin-key", "my-limited-key"

ACCESS = f"""\
access:
  max_body: 2KiB
  keys:
    - {{name: user, sha256: {hashlib.sha256(USER.encode()).hexdigest()}}}
    - {{name: admin, key: "${{TEST_ADMIN_KEY}}", scopes: [user, admin]}}
    - {{name: limited, sha256: {hashlib.sha256(LIMITED.encode()).hexdigest()}, models: [a],
        rate: 1/min}}
"""
MODELS = """\
  a: {engine: remote, url: "http://127.0.0.1:9/v1"}
  b: {engine: remote, url: "http://127.0.0.1:9/v1"}
"""


@pytest.fixture
def guarded(serve, tmp_path: Path) -> ServedGateway:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, MODELS, ACCESS)
    os.environ["TEST_ADMIN_KEY"] = ADMIN
    try:
        return serve(config)  # type: ignore[no-any-return]
    finally:
        del os.environ["TEST_ADMIN_KEY"]


def call(
    gw: ServedGateway, method: str, path: str, key: str | None, **kw: object
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, gw.url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def test_keys_and_scopes(guarded: ServedGateway) -> None:
    assert call(guarded, "GET", "/health", None).status_code == 200
    missing = call(guarded, "GET", "/v1/models", None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert call(guarded, "GET", "/v1/models", "wrong").status_code == 401
    assert call(guarded, "GET", "/v1/models", USER).status_code == 200
    denied = call(guarded, "GET", "/admin/status", USER)
    assert denied.status_code == 403 and "admin" in denied.json()["error"]["message"]
    assert call(guarded, "GET", "/admin/status", ADMIN).status_code == 200
    assert (
        call(guarded, "PUT", "/admin/nodes/local/mode", USER, json={"mode": "drained"}).status_code
        == 403
    )
    assert call(guarded, "GET", "/admin/nodes", ADMIN).json()["nodes"][0]["mode"] == "open"

    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    env = {**os.environ, "MODELYARD_API_KEY": ADMIN}
    ps = subprocess.run(
        [sys.executable, "-m", "modelyard", "ps", "--url", guarded.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ps.returncode == 0 and "remote" in ps.stdout


def test_per_key_models_rate_and_body_size(guarded: ServedGateway) -> None:
    body = {"model": "b", "messages": [{"role": "user", "content": "hi"}]}
    refused = call(guarded, "POST", "/v1/chat/completions", LIMITED, json=body)
    assert refused.status_code == 403 and "may use: a" in refused.json()["error"]["message"]
    second = call(guarded, "POST", "/v1/chat/completions", LIMITED, json={**body, "model": "a"})
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1

    big = {"model": "a", "messages": [{"role": "user", "content": "x" * 4096}]}
    too_big = call(guarded, "POST", "/v1/chat/completions", USER, json=big)
    assert too_big.status_code == 413 and "at most 2048" in too_big.json()["error"]["message"]


def test_lan_bind_without_keys_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text(f"listen: 0.0.0.0:{free_port()}\nstate_dir: {tmp_path}\nmodels: {{}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "with no API keys" in run.stderr


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("  keys: [{name: x}]\n", "give exactly one of `sha256`"),
        ("  keys: [{name: x, sha256: abc}]\n", "String should match pattern"),
        ("  keys: [{name: x, key: k, models: [nope]}]\n", "'nope' is not a model or tier"),
        ("  keys: [{name: x, key: k, rate: fast}]\n", "expected a rate such as 60/min"),
        ("  keys: [{name: x, key: k}, {name: x, key: j}]\n", "two keys are named 'x'"),
    ],
)
def test_bad_access_config(keys: str, expected: str) -> None:
    from modelyard.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("access:\n" + keys + "models:\n" + MODELS, "f.yaml", {})
    assert expected in str(info.value)
