"""Config loading and validation: every error names file, line and key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from modelyard.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    split_listen,
)
from modelyard.engines.command import CommandModel
from modelyard.engines.llamacpp import LlamaCppModel
from modelyard.engines.remote import RemoteModel
from modelyard.units import parse_duration

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


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
            "access:\n  keys:\n    - {name: me, key: '${EMPTY:-}'}\n",
            "test.yaml:3: access.keys[0]: `key` is empty (an empty ${VAR}?)",
            id="empty key",
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
        pytest.param(
            "listen: 127.0.0.1:8000\nmodels:\n  a: \x07\n",
            "test.yaml:3: (top): not valid YAML: unacceptable character #x0007",
            id="control character",
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
    # The one warning an example may carry: what a model across nodes exposes (rpc-server
    # has no authentication), said of every such model.
    spans = [m for m in cfg.models.values() if getattr(m, "span", None)]
    assert cfg.models and len(cfg.warnings) == len(spans)
    assert all("no authentication" in w for w in cfg.warnings)
    assert cfg.open_without_keys() is None  # serve starts on it as it is


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


def _types(annotation: Any) -> Iterator[Any]:
    """Every type an annotation names: inside unions, ``Annotated``, lists and dicts."""
    if get_origin(annotation) is Annotated:
        yield from _types(get_args(annotation)[0])
    elif get_origin(annotation) is None:
        yield annotation
    else:
        for arg in get_args(annotation):
            yield from _types(arg)


def _path_fields(cls: type[BaseModel]) -> set[str]:
    """``Class.field`` of every field typed Path (or Path | None) in ``cls`` and below it."""
    found: set[str] = set()
    for name, field in cls.model_fields.items():
        for kind in _types(field.annotation):
            if kind is Path:
                found.add(f"{cls.__name__}.{name}")
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= _path_fields(kind)
    return found


def _path_values(value: Any) -> Iterator[tuple[str, Path]]:
    """``(Class.field, value)`` of every Path in a loaded config."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            inner = getattr(value, name)
            if isinstance(inner, Path):
                yield f"{type(value).__name__}.{name}", inner
            else:
                yield from _path_values(inner)
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _path_values(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _path_values(inner)


# Every Path field of the schema, each set to P/ followed by its own name. A new Path field
# fails test_every_path_field_is_rooted until it is added here (and so checked).
EVERY_PATH = """\
state_dir: P/Config.state_dir
engines:
  llama.cpp: {binary: P/LlamaCppSettings.binary}
nodes:
  here: {}
  there: {url: "http://127.0.0.1:9", state_dir: P/Node.state_dir, gpus_file: P/Node.gpus_file}
models:
  a: {engine: llama.cpp, weights: P/LlamaCppModel.weights}
  b: {engine: command, command: [server, "{port}"], cwd: P/CommandModel.cwd}
  c: {engine: ollama, model: "x:1b", models_dir: P/OllamaModel.models_dir}
"""


@pytest.mark.parametrize("written", ["sub", "~"], ids=["relative", "home"])
def test_every_path_field_is_rooted(tmp_path: Path, written: str) -> None:
    file = tmp_path / "conf" / "modelyard.yaml"
    file.parent.mkdir()
    file.write_text(EVERY_PATH.replace("P/", f"{written}/"), encoding="utf-8")
    root = Path.home() if written == "~" else file.parent / "sub"
    cfg = load_config(file, environ={})
    values = dict(_path_values(cfg))
    # `source` is not written in the file: it is the file, found by the loader.
    assert values.pop("Config.source") == file.resolve()
    assert set(values) == _path_fields(Config) - {"Config.source"}, "add new fields to EVERY_PATH"
    assert values == {field: root / field for field in values}


@pytest.mark.parametrize("written", ["~/agent-state", "agent-state"])
def test_node_state_dir_is_rooted(tmp_path: Path, written: str) -> None:
    file = tmp_path / "two-nodes.yaml"
    file.write_text(
        f"nodes:\n  here: {{}}\n  gamer: {{url: 'http://127.0.0.1:9', state_dir: {written}}}\n",
        encoding="utf-8",
    )
    state = load_config(file, environ={}).nodes["gamer"].state_dir
    base = Path.home() if written.startswith("~") else tmp_path
    assert state == base / "agent-state"


def test_a_home_that_cannot_be_found_is_a_located_error() -> None:
    found = errors("listen: 127.0.0.1:8000\nstate_dir: ~no-such-user-modelyard/state\n")
    assert len(found) == 1 and found[0].startswith("/etc/modelyard/test.yaml:2: state_dir: "), found
    assert "cannot expand ~" in found[0]


def test_a_file_not_in_utf8_is_a_located_error(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes("listen: 127.0.0.1:8000\n# caf\u00e9\nmodels: {}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    [issue] = info.value.issues
    assert (issue.file, issue.line) == (str(file), 2)
    assert "not UTF-8: byte 0xe9 at column 6" in issue.message


# A type error in each kind of part, beside references to those parts (which exist, so are
# no error) and to parts that do not exist (which are).
BROKEN_BESIDE_UNKNOWN = """\
scheduler:
  drain_timeout: soon
nodes:
  here: {}
  gamer:
    url: http://127.0.0.1:9
    modes: {normal: open, gaming: gated}
    gpus: [{index: 0, memory: 24GiB}]
    reserve: lots
models:
  a: {engine: llama.cpp, weights: a.gguf, aliases: [fast], ttl: never}
  b: {engine: remote, url: "https://x/v1", node: gamer, gpus: [0]}
  c: {engine: remote, url: "https://x/v1", node: nowhere}
tiers:
  cheap: [fast, 7]
  good: [b, ghost]
policy:
  - {name: typed, tokens_over: many, use: ghost}
  - {name: to-broken, use: fast}
  - {name: to-broken-tier, use: cheap}
  - {name: in-gaming, node_mode: {gamer: gaming}, use: b}
  - {name: unknown-mode, node_mode: {gamer: sleeping}, use: b}
  - {name: unknown, use: nothing}
access:
  keys:
    - {name: k, key: secret, models: [a, cheap, missing]}
"""


def test_cross_checks_run_on_what_validates_beside_type_errors() -> None:
    found = errors(BROKEN_BESIDE_UNKNOWN)
    where = sorted(e.split(": ", 2)[1] for e in found)
    assert where == [
        "access.keys[0].models[2]",  # 'missing' is not a model or tier
        "models.a.ttl",
        "models.c.node",  # 'nowhere' is not a node
        "nodes.gamer.reserve",
        "policy[0].tokens_over",  # its `use: ghost` is not reported: the rule did not validate
        "policy[4].node_mode",  # gamer has no mode 'sleeping'
        "policy[5].use",  # 'nothing' is neither a model nor a tier
        "scheduler.drain_timeout",
        "tiers.cheap[1]",
        "tiers.good[1]",  # 'ghost' is neither a model nor a tier
    ], found


def test_an_unset_variable_is_reported_once_beside_other_errors() -> None:
    found = errors(
        "models:\n  a: {engine: remote, url: '${A_URL}'}\npolicy:\n  - {name: r, use: ghost}\n"
    )
    assert len(found) == 2, found
    assert "test.yaml:2: models.a.url: environment variable A_URL is not set" in found[0]
    assert "test.yaml:4: policy[0].use: 'ghost' is neither a model nor a tier" in found[1]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("9200-9219", range(9200, 9220)),
        ("9200-9200", range(9200, 9201)),
        ("80-90", "1024 <= FIRST <= LAST <= 65535"),
        ("9300-9200", "1024 <= FIRST <= LAST <= 65535"),
        ("9200-70000", "1024 <= FIRST <= LAST <= 65535"),
        ("9200", "should match pattern"),
        ("9200-", "should match pattern"),
    ],
)
def test_engine_ports(given: str, expected: range | str) -> None:
    text = (
        "nodes:\n  here: {gpus: []}\n"
        f"  gamer: {{url: 'http://10.0.0.2:9100', gpus: [], engine_ports: '{given}'}}\n"
        "models:\n  m: {engine: command, command: [x, '{port}']}\n"
    )
    if isinstance(expected, range):
        assert parse(text).nodes["gamer"].ports == expected
    else:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse(text)


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("{url: 'http://192.168.1.50:9100'}", ("192.168.1.50", 9100)),
        ("{url: 'http://gamer.lan:9100'}", ("0.0.0.0", 9100)),  # a name: every address
        ("{url: 'http://192.168.1.50:9100', engine_listen: 0.0.0.0}", ("0.0.0.0", 9100)),
        ("{url: 'http://192.168.1.50'}", ("192.168.1.50", 80)),
    ],
)
def test_where_an_agent_listens(node: str, expected: tuple[str, int]) -> None:
    text = (
        f"nodes:\n  here: {{gpus: []}}\n  gamer: {node}\n"
        "models:\n  m: {engine: command, command: [x, '{port}']}\n"
    )
    assert parse(text).nodes["gamer"].agent_listen() == expected


def test_an_empty_agent_token_is_refused() -> None:
    text = (
        "nodes:\n  here: {gpus: []}\n  gamer: {url: 'http://10.0.0.2:9100', token: '${TOKEN}'}\n"
        "models:\n  m: {engine: command, command: [x, '{port}']}\n"
    )
    [said] = errors(text, {"TOKEN": ""})
    assert "nodes.gamer.token: token is empty (a ${VAR} that is set to nothing?)" in said
    assert parse(text, {"TOKEN": "s3cret"}).nodes["gamer"].token == "s3cret"
