"""Config loading and validation: every error names file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import (
    CommandModel,
    ConfigError,
    LlamaCppModel,
    RemoteModel,
    load_config,
    parse_config,
    split_listen,
)
from modelyard.units import parse_duration

EXAMPLES = Path(__file__).parent.parent / "examples"


def parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(text, "/etc/modelyard/test.yaml", env or {})


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return [str(issue) for issue in info.value.issues]


GOOD = """\
listen: 0.0.0.0:9000
scheduler:
  drain_timeout: 1m
models:
  small:
    engine: llama.cpp
    aliases: [fast, tiny]
    weights: models/small.gguf
    context: 4096
    parallel: 4
    ttl: 5m
    swap_group: gpu
  coder:
    engine: command
    command: [vllm, serve, Qwen/Qwen3-Coder, --port, "{port}"]
    upstream_model: Qwen/Qwen3-Coder
    health_path: /health
  glm:
    engine: remote
    url: https://api.example.com/v1/
    api_key: ${GLM_KEY}
    upstream_model: glm-4.6
"""


def test_good_config_parses_every_engine() -> None:
    cfg = parse(GOOD, {"GLM_KEY": "sk-secret"})
    assert cfg.listen == "0.0.0.0:9000"
    assert cfg.scheduler.drain_timeout == 60
    small, coder, glm = (cfg.models[n] for n in ("small", "coder", "glm"))
    assert isinstance(small, LlamaCppModel) and small.ttl == 300 and small.parallel == 4
    assert small.weights == Path("/etc/modelyard/models/small.gguf")  # relative to the file
    assert isinstance(coder, CommandModel) and coder.upstream_model == "Qwen/Qwen3-Coder"
    assert isinstance(glm, RemoteModel) and glm.api_key == "sk-secret"
    assert glm.url == "https://api.example.com/v1"
    assert cfg.resolve("tiny") is small and cfg.resolve("nope") is None
    assert cfg.state_dir == Path("/etc/modelyard/.modelyard")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "models:\n  a:\n    engine: llama.cpp\n    weights: a.gguf\n    tll: 5m\n",
            "test.yaml:5: models.a.tll: unknown key",
            id="unknown key, with its line",
        ),
        pytest.param(
            "modles: {}\n",
            "test.yaml:1: modles: unknown key",
            id="unknown top-level key",
        ),
        pytest.param(
            "models:\n  a:\n    engine: llama.cpp\n",
            "test.yaml:2: models.a.weights: required key is missing",
            id="missing weights",
        ),
        pytest.param(
            "models:\n  a:\n    engine: tensorrt\n",
            "models.a: engine must be one of: llama.cpp, command, remote",
            id="unknown engine",
        ),
        pytest.param(
            "models:\n  a:\n    weights: a.gguf\n",
            "`engine:` is missing",
            id="engine missing",
        ),
        pytest.param(
            "models:\n  a:\n    engine: llama.cpp\n    weights: a.gguf\n    ttl: soon\n",
            "test.yaml:5: models.a.ttl: 'soon' is not a duration",
            id="bad duration",
        ),
        pytest.param(
            "models:\n  a:\n    engine: llama.cpp\n    weights: a.gguf\n    parallel: 0\n",
            "test.yaml:5: models.a.parallel: Input should be greater than or equal to 1 (got 0)",
            id="parallel below 1",
        ),
        pytest.param(
            "models:\n  a:\n    engine: command\n    command: [server, --port, 8080]\n",
            "models.a.command: the command must contain {port}",
            id="command without port placeholder",
        ),
        pytest.param(
            "models:\n  a:\n    engine: remote\n    url: api.example.com\n",
            "test.yaml:4: models.a.url: expected an http:// or https:// URL",
            id="remote url without scheme",
        ),
        pytest.param(
            "models:\n  a:\n    engine: remote\n    url: https://x/v1\n    api_key: ${NOPE}\n",
            "test.yaml:5: models.a.api_key: environment variable NOPE is not set",
            id="missing environment variable",
        ),
        pytest.param(
            "models:\n  a: {engine: remote, url: 'https://x/v1', aliases: [b]}\n"
            "  b: {engine: remote, url: 'https://y/v1'}\n",
            "'b' names both 'a' and 'b'",
            id="alias clashes with a name",
        ),
        pytest.param(
            "listen: 8000\n",
            "test.yaml:1: listen: '8000': expected HOST:PORT",
            id="listen without host",
        ),
        pytest.param(
            "models:\n  a:\n    engine: llama.cpp\n    weights: a.gguf\n    args: [--port, '9']\n",
            "models.a.args: '--port' is set by modelyard",
            id="managed llama-server flag",
        ),
        pytest.param(
            "timeouts:\n  idle: -5s\n",
            "test.yaml:2: timeouts.idle: '-5s' is not a duration",
            id="negative timeout",
        ),
        pytest.param(
            "timeouts:\n  connect: 0\n",
            "test.yaml:2: timeouts.connect: Input should be greater than 0",
            id="zero timeout",
        ),
        pytest.param(
            "models:\n  a:\n    engine: remote\n    url: https://x/v1\n"
            "    timeouts: {first_bytes: 5s}\n",
            "test.yaml:5: models.a.timeouts.first_bytes: unknown key",
            id="misspelt timeout",
        ),
        pytest.param(
            "models: [a, b]\n",
            "test.yaml:1: models: Input should be a valid dictionary",
            id="models as a list",
        ),
        pytest.param(
            "models:\n  a: {engine: remote, url: 'https://x/v1'}\n  a: {engine: remote, url: 'https://x/v1'}\n",
            "test.yaml:3: models.a: key given twice",
            id="duplicate key",
        ),
        pytest.param(
            "models:\n  a: [unclosed\n",
            "test.yaml:3: (top): not valid YAML",
            id="broken YAML",
        ),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    found = errors(text)
    assert any(expected in e for e in found), found


def test_every_error_is_reported_at_once() -> None:
    text = (
        "models:\n  a:\n    engine: llama.cpp\n    weights: a.gguf\n    ttl: never\n"
        "  b:\n    engine: remote\n    url: nope\n"
    )
    found = errors(text)
    assert len(found) == 2, found


def test_env_default_and_expansion() -> None:
    text = "listen: ${HOST:-127.0.0.1}:${PORT}\n"
    assert parse(text, {"PORT": "8123"}).listen == "127.0.0.1:8123"


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/modelyard.yaml")
    assert "cannot read" in str(info.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2", 2.0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "-1", "m5", True, -3])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:8000", ("0.0.0.0", 8000)), (":9000", ("0.0.0.0", 9000)), ("[::1]:80", ("::1", 80))],
)
def test_split_listen(value: str, expected: tuple[str, int]) -> None:
    assert split_listen(value) == expected


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    cfg = load_config(path, environ={"GAMER_AGENT_TOKEN": "t"})
    assert cfg.models and cfg.warnings == []


def test_s4_shares_fit_one_gpu_together() -> None:
    from modelyard.estimate import need_for
    from modelyard.gpus import inventory
    from modelyard.placement import Inventory, Resident, plan_eviction

    cfg = load_config(EXAMPLES / "s4-split-gpu.yaml", environ={})
    gpus = inventory("rtx-pro", cfg.nodes["rtx-pro"])
    inv = Inventory({(g.node, g.index): g for g in gpus})
    coder = need_for(cfg, "coder", gpus, None)
    running = {"coder": Resident("coder", True, None, coder)}
    assert (
        plan_eviction("general", None, running, need_for(cfg, "general", gpus, None), inv).explain()
        == "general starts beside what runs"
    )


def test_s1_tiers_share_one_swap_group() -> None:
    cfg = load_config(EXAMPLES / "s1-variet.yaml", environ={})
    assert {m.swap_group for m in cfg.models.values()} == {"machine-a"}
    assert len(cfg.models) == 5


def test_s5_heavy_models_never_run_together() -> None:
    cfg = load_config(EXAMPLES / "s5-single-active.yaml", environ={})
    heavy = [m for m in cfg.models.values() if m.swap_group == "vram-32g"]
    assert len(heavy) >= 2


def test_timeouts_default_then_config_then_model() -> None:
    cfg = parse(
        "timeouts: {idle: 30s}\nmodels:\n"
        "  a: {engine: remote, url: 'https://x/v1', timeouts: {first_byte: 2m}}\n"
        "  b: {engine: remote, url: 'https://y/v1'}\n"
    )
    a = cfg.timeouts.over(cfg.models["a"].timeouts)
    assert (a.connect, a.first_byte, a.idle) == (10.0, 120.0, 30.0)
    b = cfg.timeouts.over(cfg.models["b"].timeouts)
    assert (b.connect, b.first_byte, b.idle) == (10.0, 600.0, 30.0)
