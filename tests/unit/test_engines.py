"""Engine adapters: the command lines and environments they build, and Ollama's API calls."""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelyard.config import ConfigError, Engines, Model, parse_config
from modelyard.engine_calls import SessionHttp
from modelyard.engines.base import Launch
from modelyard.engines.catalog import engine_for
from modelyard.engines.llamacpp import LlamaCppEngine, LlamaCppModel
from modelyard.engines.ollama import OllamaEngine, OllamaModel, keep_alive_value
from modelyard.engines.vllm import VllmEngine, VllmModel
from modelyard.errors import StartError


def model(spec: str, name: str = "m") -> Model:
    """The one model of a config whose ``models.NAME`` body is ``spec`` (YAML, unindented)."""
    body = textwrap.indent(textwrap.dedent(spec).strip() + "\n", "    ")
    return parse_config(f"models:\n  {name}:\n{body}", "/srv/yard/f.yaml", {}).models[name]


def errors(spec: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        model(spec)
    return [str(issue) for issue in info.value.issues]


def vllm(spec: str, name: str = "m") -> VllmEngine:
    m = model(spec, name)
    assert isinstance(m, VllmModel)
    engine = engine_for(m, host="10.0.0.5")
    assert isinstance(engine, VllmEngine)
    return engine


def ollama(spec: str, host: str = "127.0.0.1") -> OllamaEngine:
    m = model(spec)
    assert isinstance(m, OllamaModel)
    engine = engine_for(m, host=host)
    assert isinstance(engine, OllamaEngine)
    return engine


# vLLM


def test_vllm_command_line_with_every_managed_flag() -> None:
    engine = vllm(
        """
        engine: vllm
        model: Qwen/Qwen3-8B
        max_model_len: 32768
        memory_share: 0.45
        gpus: [1, 3]
        args: [--enable-prefix-caching, --max-num-seqs, 8]
        env: {HF_HOME: /data/hf}
        """,
        name="qwen",
    )
    launch = engine.launch(8123)
    assert launch.argv == [
        "vllm",
        "serve",
        "Qwen/Qwen3-8B",
        "--host",
        "10.0.0.5",
        "--port",
        "8123",
        "--served-model-name",
        "qwen",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.45",
        "--tensor-parallel-size",
        "2",
        "--enable-prefix-caching",
        "--max-num-seqs",
        "8",
    ]
    assert launch.env == {"HF_HOME": "/data/hf", "CUDA_VISIBLE_DEVICES": "1,3"}
    assert launch.health_path == "/health"
    upstream = engine.upstream(8123)
    assert upstream.base_url == "http://10.0.0.5:8123/v1"
    assert upstream.model is None  # --served-model-name already answers with our name


def test_vllm_defaults_leave_gpus_memory_and_context_to_vllm() -> None:
    launch = vllm("engine: vllm\nmodel: facebook/opt-125m").launch(9000)
    assert launch.argv == [
        "vllm",
        "serve",
        "facebook/opt-125m",
        "--host",
        "10.0.0.5",
        "--port",
        "9000",
        "--served-model-name",
        "m",
    ]
    assert launch.env == {}


def test_vllm_one_gpu_is_not_tensor_parallel() -> None:
    launch = vllm("engine: vllm\nmodel: x\ngpus: [2]").launch(9000)
    assert "--tensor-parallel-size" not in launch.argv
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "2"


def test_vllm_no_gpus_hides_them_all() -> None:
    launch = vllm("engine: vllm\nmodel: x\ngpus: []").launch(9000)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param("[--tensor-parallel-size, 4]", id="spelled out"),
        pytest.param("[--tensor-parallel-size=4]", id="with ="),
        pytest.param("[-tp, 4]", id="short"),
    ],
)
def test_vllm_tensor_parallel_in_args_is_kept(args: str) -> None:
    launch = vllm(f"engine: vllm\nmodel: x\ngpus: [0, 1]\nargs: {args}").launch(9000)
    joined = " ".join(launch.argv)
    assert "--tensor-parallel-size 2" not in joined
    assert launch.argv[-len(yaml_list(args)) :] == yaml_list(args)


def yaml_list(text: str) -> list[str]:
    return [part.strip() for part in text.strip("[]").split(",")]


@pytest.mark.parametrize(
    ("arg", "hint"),
    [
        ("--port", "free port"),
        ("--host", "node"),
        ("--served-model-name=foo", "`aliases`"),
        ("--gpu-memory-utilization", "`memory_share`"),
    ],
)
def test_vllm_refuses_flags_modelyard_owns(arg: str, hint: str) -> None:
    found = errors(f"engine: vllm\nmodel: x\nargs: [{arg}, '1']")
    assert len(found) == 1, found
    assert found[0].startswith("/srv/yard/f.yaml:"), found
    assert "models.m.args" in found[0] and f"{arg!r} is set by modelyard" in found[0]
    assert hint in found[0]


def test_vllm_needs_a_model() -> None:
    assert any("models.m.model: required key is missing" in e for e in errors("engine: vllm"))


def test_vllm_memory_share_must_be_a_share() -> None:
    assert any("memory_share" in e for e in errors("engine: vllm\nmodel: x\nmemory_share: 1.5"))


def test_vllm_missing_binary_is_a_problem() -> None:
    engine = vllm("engine: vllm\nmodel: x\nbinary: /nonexistent/bin/vllm")
    problem = engine.problem()
    assert problem is not None and "/nonexistent/bin/vllm" in problem and "PATH" in problem


def test_vllm_binary_found_is_no_problem(tmp_path: Path) -> None:
    program = tmp_path / "vllm"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert vllm(f"engine: vllm\nmodel: x\nbinary: {program}").problem() is None


# Ollama


def test_ollama_daemon_command_and_environment() -> None:
    engine = ollama(
        """
        engine: ollama
        model: mistral:7b-instruct-q5_K_M
        gpus: [0, 2]
        num_ctx: 8192
        models_dir: ollama-models
        env: {OLLAMA_FLASH_ATTENTION: 1}
        """,
        host="192.168.1.20",
    )
    launch = engine.launch(11500)
    assert launch.argv == ["ollama", "serve"]
    assert launch.env == {
        "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_HOST": "192.168.1.20:11500",
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_CONTEXT_LENGTH": "8192",
        "CUDA_VISIBLE_DEVICES": "0,2",
        "OLLAMA_MODELS": "/srv/yard/ollama-models",  # relative to the config file
    }
    assert launch.health_path == "/"
    upstream = engine.upstream(11500)
    assert upstream.base_url == "http://192.168.1.20:11500/v1"
    assert upstream.model == "mistral:7b-instruct-q5_K_M"


def test_ollama_defaults() -> None:
    launch = ollama("engine: ollama\nmodel: qwen3:0.6b").launch(11500)
    assert launch.env == {"OLLAMA_HOST": "127.0.0.1:11500", "OLLAMA_KEEP_ALIVE": "-1"}


def test_ollama_no_gpus_uses_an_invalid_id() -> None:
    launch = ollama("engine: ollama\nmodel: qwen3:0.6b\ngpus: []").launch(11500)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "-1"  # Ollama's documented CPU-only switch


def test_ollama_refuses_its_host_in_env() -> None:
    found = errors("engine: ollama\nmodel: x\nenv: {OLLAMA_HOST: 0.0.0.0:11434}")
    assert any("models.m.env" in e and "OLLAMA_HOST is set by modelyard" in e for e in found)


def test_ollama_missing_binary_is_a_problem() -> None:
    problem = ollama("engine: ollama\nmodel: x\nbinary: /nonexistent/ollama").problem()
    assert problem is not None and "/nonexistent/ollama" in problem


@pytest.mark.parametrize(
    ("text", "value"),
    [("-1", -1), ("0", 0), ("3600", 3600), ("1.5", 1.5), ("10m", "10m"), ("-1m", "-1m")],
)
def test_keep_alive_numbers_go_as_numbers(text: str, value: Any) -> None:
    assert keep_alive_value(text) == value
    assert type(keep_alive_value(text)) is type(value)


def test_unknown_engine_lists_the_new_ones() -> None:
    found = errors("engine: tensorrt")
    assert any(
        "engine must be one of: llama.cpp, command, remote, vllm, ollama" in e for e in found
    )


@dataclass
class OllamaStub:
    """A tiny stand-in for ``ollama serve``'s /api/generate."""

    port: int
    bodies: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    answer: dict[str, Any] = field(default_factory=lambda: {"done": True})


@pytest.fixture
async def stub() -> AsyncIterator[OllamaStub]:
    state = OllamaStub(port=0)

    async def generate(request: web.Request) -> web.Response:
        state.bodies.append(await request.json())
        return web.json_response(state.answer, status=state.status)

    app = web.Application()
    app.router.add_post("/api/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[SessionHttp]:
    async with aiohttp.ClientSession() as s:
        yield SessionHttp(s)


async def test_ollama_loads_after_ready_and_unloads_before_stop(
    stub: OllamaStub, session: SessionHttp
) -> None:
    engine = ollama("engine: ollama\nmodel: mistral:7b\nnum_ctx: 4096")
    await engine.after_ready(session, stub.port)
    await engine.before_stop(session, stub.port)
    assert stub.bodies == [
        {"model": "mistral:7b", "keep_alive": -1, "options": {"num_ctx": 4096}},
        {"model": "mistral:7b", "keep_alive": 0},
    ]


async def test_ollama_load_without_num_ctx_sends_no_options(
    stub: OllamaStub, session: SessionHttp
) -> None:
    engine = ollama("engine: ollama\nmodel: mistral:7b\nkeep_alive: 24h")
    await engine.after_ready(session, stub.port)
    assert stub.bodies == [{"model": "mistral:7b", "keep_alive": "24h"}]


async def test_ollama_model_not_pulled_fails_the_start_with_the_fix(
    stub: OllamaStub, session: SessionHttp
) -> None:
    stub.status, stub.answer = 404, {"error": "model 'x' not found"}
    engine = ollama("engine: ollama\nmodel: x")
    with pytest.raises(StartError) as info:
        await engine.after_ready(session, stub.port)
    message = str(info.value)
    assert "model 'x' not found" in message
    assert "run `ollama pull x`" in message and "on that node" in message
    assert "404" in message


async def test_ollama_pull_hint_names_the_models_dir(
    stub: OllamaStub, session: SessionHttp
) -> None:
    stub.status, stub.answer = 404, {"error": "model 'x' not found"}
    engine = ollama("engine: ollama\nmodel: x\nmodels_dir: /data/ollama")
    with pytest.raises(StartError, match="OLLAMA_MODELS=/data/ollama"):
        await engine.after_ready(session, stub.port)


async def test_ollama_other_errors_fail_the_start_without_a_pull_hint(
    stub: OllamaStub, session: SessionHttp
) -> None:
    stub.status, stub.answer = 500, {"error": "out of memory"}
    engine = ollama("engine: ollama\nmodel: x")
    with pytest.raises(StartError) as info:
        await engine.after_ready(session, stub.port)
    assert "out of memory" in str(info.value) and "pull" not in str(info.value)


async def test_ollama_unreachable_daemon_fails_the_start(session: SessionHttp) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with pytest.raises(StartError, match="could not load"):
        await ollama("engine: ollama\nmodel: x").after_ready(session, port)


async def test_ollama_failed_unload_raises(stub: OllamaStub, session: SessionHttp) -> None:
    stub.status, stub.answer = 500, {"error": "busy"}
    with pytest.raises(RuntimeError, match="busy"):
        await ollama("engine: ollama\nmodel: x").before_stop(session, stub.port)


def test_stub_bodies_are_plain_json() -> None:
    # keep_alive and options must survive a JSON round trip exactly as Ollama reads them.
    body = ollama("engine: ollama\nmodel: x\nnum_ctx: 2048").load_body()
    assert json.loads(json.dumps(body)) == body


def _llama(extra: str) -> Launch:
    text = (
        "nodes:\n  a:\n    gpus: [{index: 0, memory: 12GiB}, {index: 1, memory: 12GiB}]\n"
        f"models:\n  m:\n    engine: llama.cpp\n    weights: /m.gguf\n{extra}"
    )
    model = parse_config(text, "f.yaml", {}).models["m"]
    assert isinstance(model, LlamaCppModel)
    settings = Engines.model_validate({"llama.cpp": {"binary": "/bin/true"}})  # any executable
    return LlamaCppEngine(model, "10.0.0.5", settings).launch(8123)


@pytest.mark.parametrize(
    ("extra", "argv_has", "env"),
    [
        pytest.param("    gpus: [1]\n", [], {"CUDA_VISIBLE_DEVICES": "1"}, id="one GPU"),
        pytest.param(
            "    gpus: [0, 1]\n    tensor_split: [1, 3]\n",
            ["--tensor-split", "1,3"],
            {"CUDA_VISIBLE_DEVICES": "0,1"},
            id="split across two",
        ),
        pytest.param(
            "    gpus: []\n", ["--n-gpu-layers", "0"], {"CUDA_VISIBLE_DEVICES": ""}, id="CPU only"
        ),
        pytest.param("", [], {}, id="not placed: the engine decides"),
    ],
)
def test_llamacpp_gets_its_gpus(extra: str, argv_has: list[str], env: dict[str, str]) -> None:
    launch = _llama(extra)
    argv = launch.argv
    assert argv[:7] == [
        "/bin/true",
        "--model",
        "/m.gguf",
        "--host",
        "10.0.0.5",
        "--port",
        "8123",
    ]
    joined = " ".join(argv)
    assert " ".join(argv_has) in joined
    # GGML_NO_BACKTRACE: an abort's own line is the engine's last (what a failed start quotes)
    assert launch.env == {"GGML_NO_BACKTRACE": "1", **env}
