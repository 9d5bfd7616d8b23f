"""``modelyard doctor`` against real things: the real llama-server and GGUF files, a real
agent (in this process, served by uvicorn), a real gateway process holding the port."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from modelyard import demo
from modelyard.agent import create_agent_app
from modelyard.cli.doctor import doctor
from modelyard.config import load_config
from modelyard.demo import (
    CHAT_DEFAULT,
    CHAT_ENV,
    EMBED_DEFAULT,
    EMBED_ENV,
    GEMMA_DEFAULT,
    GEMMA_ENV,
)
from modelyard.doctor import CHECKS, load, run_checks
from modelyard.doctor import gpus as doctor_gpus
from modelyard.doctor.gpus import Nvml
from modelyard.placement import Gpu
from tests.conftest import free_port, gemma_model, stub_model, write_config
from tests.e2e.test_logs_follow_e2e import serving

pytestmark = pytest.mark.e2e
DEMO = Path(__file__).parents[2] / "examples" / "demo.yaml"


def run(*args: str) -> tuple[int, list[dict[str, Any]]]:
    """``modelyard doctor ARGS --json`` through a typer app of its own: exit code, results."""
    app = typer.Typer()
    app.command()(doctor)
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code in (0, 1), done.output
    results = json.loads(done.stdout)
    assert all(set(r) == {"name", "status", "message", "fix"} for r in results)
    return done.exit_code, results


def by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results if r["name"] not in ("config", "access")}


def test_the_demo_config_passes_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemma: Path
) -> None:
    # The demo's files where `python -m modelyard.demo` wrote them; where it did not (CI:
    # the test extra has not the chat model's packages), files of the same kinds in their
    # place, so that this runs everywhere: gemma for the chat models, the embedding model
    # converted here as the demo does.
    for env, default in ((CHAT_ENV, CHAT_DEFAULT), (GEMMA_ENV, GEMMA_DEFAULT)):
        if not Path(os.environ.get(env, default)).expanduser().is_file():
            monkeypatch.setenv(env, str(gemma))
    if not Path(os.environ.get(EMBED_ENV, EMBED_DEFAULT)).expanduser().is_file():
        embed = tmp_path / "all-minilm-l6-v2-f16.gguf"
        demo.embed_convert(embed)
        monkeypatch.setenv(EMBED_ENV, str(embed))
    monkeypatch.setenv("MODELYARD_STATE_DIR", str(tmp_path / "state"))
    code, results = run("-c", str(DEMO))
    found = by_name(results)
    for model in ("qwen", "gemma", "embed"):
        assert found[f"weights {model}"]["status"] == "ok"
        assert found[f"memory {model}"]["status"] in ("ok", "warn")
    assert found["engine speech"]["status"] == "ok"
    assert found["engine llama.cpp"]["status"] in ("ok", "warn")
    # The demo listens on 127.0.0.1:8000, which another program here may hold.
    port = found["port gateway"]
    others = [r for r in results if r["status"] == "fail" and r is not port]
    assert not others, others
    assert code == (1 if port["status"] == "fail" else 0)


def test_a_gemma_config_with_the_real_llama_server_passes(
    tmp_path: Path, gemma: Path, llama_server: str
) -> None:
    config = write_config(tmp_path, gemma_model("g", gemma))
    code, results = run("-c", str(config))
    assert code == 0, results
    found = by_name(results)
    engine = found["engine llama.cpp"]
    assert engine["message"].startswith(f"{llama_server}: ")
    assert "version unknown" not in engine["message"]  # read from its --version
    assert "backends: " in engine["message"] and "CPU" in engine["message"]
    assert found["weights g"] == {
        "name": "weights g",
        "status": "ok",
        "message": f"{gemma} (241.4 MiB, gemma3)",
        "fix": None,
    }
    assert found["memory g"]["status"] in ("ok", "warn")
    assert found["port gateway"]["status"] == "ok"


def test_a_config_that_does_not_load_gets_the_machine_checks(tmp_path: Path) -> None:
    config = tmp_path / "modelyard.yaml"
    config.write_text("listen: 127.0.0.1:8000\nmodels:\n  a: {engine: llama.cpp}\n")
    code, results = run("-c", str(config))
    assert code == 1
    assert results[0]["name"] == "config" and results[0]["status"] == "fail"
    assert "models.a.weights: required key is missing" in results[0]["message"]
    names = [r["name"] for r in results]
    assert names[1:3] == ["gpus", "engine llama.cpp"] and names[-1] == "skipped"


def up(url: str) -> None:
    """Wait until ``url``'s /health answers (uvicorn starts in its thread)."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.05)


def _agent_config(tmp_path: Path, port: int, token: str) -> Path:
    config = tmp_path / f"{token}.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'gateway'}\n"
        "nodes:\n  here: {gpus: []}\n"
        f"  far:\n    url: http://127.0.0.1:{port}\n    token: {token}\n    gpus: []\n"
        f"    state_dir: {tmp_path / 'far'}\n"
        "models:\n" + stub_model("far-stub", node="far"),
        encoding="utf-8",
    )
    return config


def test_a_real_agent_is_reached_and_a_wrong_token_is_named(tmp_path: Path) -> None:
    port = free_port()
    right = _agent_config(tmp_path, port, "right-token")
    wrong = _agent_config(tmp_path, port, "wrong-token")
    with serving(create_agent_app(load_config(right), "far"), port):
        up(f"http://127.0.0.1:{port}")
        code, results = run("-c", str(right))
        assert code == 0, results
        found = by_name(results)
        assert found["agent far"]["status"] == "ok"
        assert found["agent far"]["message"].startswith(f"reachable at http://127.0.0.1:{port}")
        assert found["clock far"]["status"] == "ok"  # the same clock: within its second
        code, results = run("-c", str(wrong))
        assert code == 1
        agent = by_name(results)["agent far"]
        assert agent["status"] == "fail"
        assert agent["message"] == (
            f"wrong token: the agent at http://127.0.0.1:{port} answered 401"
        )
        assert "nodes.far.token" in agent["fix"]
        # As the agent itself: its port is held by an agent of this very node.
        code, results = run("-c", str(right), "--node", "far")
        assert code == 0, results
        held = by_name(results)["port agent"]
        assert held["status"] == "info" and "agent of node far already runs" in held["message"]
    code, results = run("-c", str(right))  # the agent is gone
    assert code == 1
    assert by_name(results)["agent far"]["message"] == (
        f"agent down at http://127.0.0.1:{port} (connection refused)"
    )


def test_a_gateway_already_on_the_port_is_a_note_not_a_problem(serve: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, stub_model("s"))
    serve(config)
    code, results = run("-c", str(config))
    assert code == 0, results
    port = by_name(results)["port gateway"]
    assert port["status"] == "info"
    assert "modelyard" in port["message"] and "gateway already runs there" in port["message"]


H200 = Gpu("here", 0, "NVIDIA H200", 140 * 1024**3, 1024**3, measured=True)


def fake_llama_server(
    folder: Path, devices: str, code: int = 0, libs: tuple[str, ...] = ()
) -> Path:
    """A llama-server that says what a build says: its version, its devices."""
    folder.mkdir()
    binary = folder / "llama-server"
    binary.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "version: 9999 (fake)" >&2; '
        f'echo "built with cc for x86_64" >&2; exit {code}; fi\n'
        f"printf 'Available devices:\\n{devices}'\n"
    )
    binary.chmod(0o755)
    for lib in libs:
        (folder / lib).write_bytes(b"")
    return binary


def engine_with(tmp_path: Path, binary: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The llama.cpp engine's result for ``binary`` on a node whose NVML sees an H200."""
    monkeypatch.setattr(doctor_gpus, "_read_nvml", lambda node: Nvml("550.54", [H200], None))
    config = write_config(tmp_path, gemma_model("g", tmp_path / "g.gguf"))
    config.write_text(
        config.read_text() + f"engines:\n  llama.cpp: {{binary: {binary}}}\n", encoding="utf-8"
    )
    results = run_checks(load(config, None), [c for c in CHECKS if c.name == "engines"])
    (engine,) = [r.as_dict() for r in results]
    return engine


def test_a_cuda_build_s_devices_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_llama_server(
        tmp_path / "bin", "  CUDA0: NVIDIA H200 (143000 MiB, 140000 MiB free)\\n"
    )
    engine = engine_with(tmp_path, binary, monkeypatch)
    assert engine == {
        "name": "engine llama.cpp",
        "status": "ok",
        "message": f"{binary}: 9999 (fake); backends: CPU, CUDA; devices: "
        "CUDA0: NVIDIA H200 (143000 MiB, 140000 MiB free)",
        "fix": None,
    }


def test_a_cpu_build_on_a_gpu_node_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_llama_server(tmp_path / "bin", "  (none)\\n", libs=("libggml-cpu.so",))
    engine = engine_with(tmp_path, binary, monkeypatch)
    assert engine["status"] == "warn"
    assert "built without a GPU backend, so its models run on the CPU" in engine["message"]
    assert "CMAKE_ARGS=-DGGML_CUDA=ON" in engine["fix"]


def test_a_cuda_library_without_devices_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_llama_server(tmp_path / "bin", "  (none)\\n", libs=("libggml-cuda.so",))
    engine = engine_with(tmp_path, binary, monkeypatch)
    assert engine["status"] == "warn" and "backends: CPU, CUDA" in engine["message"]
    assert "its CUDA backend lists no device although NVML sees 1 GPU(s)" in engine["message"]


def test_a_llama_server_that_does_not_run_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_llama_server(tmp_path / "bin", "", code=127)
    engine = engine_with(tmp_path, binary, monkeypatch)
    assert engine["status"] == "fail"
    assert engine["message"] == f"`{binary} --version` exited with 127: built with cc for x86_64"
    assert engine["fix"].startswith(f"`ldd {binary}` shows a missing library")
