"""Doctor's checks of the config (it loads; its warnings) and of this machine's GPUs (NVML
and its driver, a declared inventory, or the node's ``gpus_file``).

``nvml`` and ``node_gpus`` are the readings the other checks share, taken once.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.config import Node
from modelyard.doctor.result import Context, Result
from modelyard.gpus import inventory, read_nvml
from modelyard.placement import Gpu
from modelyard.units import format_bytes

# --- config -------------------------------------------------------------------------------


def check_config(ctx: Context) -> list[Result]:
    """The config loads; its warnings (``modelyard check``'s) are shown as warnings."""
    cfg = ctx.config
    if cfg is None:
        return [
            Result(
                "config",
                "fail",
                "does not load: " + "; ".join(ctx.config_issues),
                f"fix what it says (`modelyard check {ctx.config_path}` lists every error; "
                "docs/config.md every key); -c FILE names another config",
            )
        ]
    where = f"as node {ctx.node}'s agent" if ctx.agent else "as the gateway"
    found = [
        Result(
            "config",
            "ok",
            f"{ctx.config_path}: {len(cfg.models)} model(s), {len(cfg.nodes)} node(s); "
            f"checked {where}",
        )
    ]
    found += [Result("config", "warn", w) for w in cfg.warnings]
    elsewhere = sorted({cfg.node_of(m) for m in cfg.models} - {ctx.node})
    if elsewhere and not ctx.agent:
        found.append(
            Result(
                "config",
                "info",
                f"models on other nodes ({', '.join(elsewhere)}) are checked there",
                "on each of those machines: modelyard doctor -c CONFIG --node NODE",
            )
        )
    return found


# --- GPUs and NVML ------------------------------------------------------------------------


@dataclass(frozen=True)
class Nvml:
    """What NVML says on this machine: its driver and GPUs, or why it does not load."""

    driver: str | None
    gpus: list[Gpu]
    error: str | None


def _read_nvml(node: str) -> Nvml:
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        return Nvml(None, [], "the nvidia-ml-py package is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Nvml(None, [], str(exc) or type(exc).__name__)
    try:
        raw = pynvml.nvmlSystemGetDriverVersion()
        driver: str | None = raw.decode() if isinstance(raw, bytes) else str(raw)
    except pynvml.NVMLError:
        driver = None
    finally:
        pynvml.nvmlShutdown()
    return Nvml(driver, read_nvml(node) or [], None)


def nvml(ctx: Context) -> Nvml:
    """NVML's reading, taken once."""
    result: Nvml = ctx.once("nvml", lambda: _read_nvml(ctx.node or "local"))
    return result


def node_gpus(ctx: Context) -> list[Gpu]:
    """This node's GPUs as its gateway or agent sees them now (declared, file or NVML)."""
    cfg, node = ctx.config, ctx.node
    if cfg is None or node is None or node not in cfg.nodes:
        return nvml(ctx).gpus
    spec = cfg.nodes[node]
    if spec.gpus == "auto" and spec.gpus_file is None:
        return nvml(ctx).gpus
    found: list[Gpu] = ctx.once("gpus", lambda: inventory(node, spec))
    return found


def gpu_list(gpus: list[Gpu]) -> str:
    """The GPUs in a line: index, name, memory (and free, where NVML read it)."""
    if not gpus:
        return "no GPU"
    return ", ".join(
        f"GPU {g.index} {g.name} {format_bytes(g.total)}"
        + (f" ({format_bytes(g.total - g.used)} free)" if g.measured else "")
        for g in gpus
    )


def check_gpus(ctx: Context) -> list[Result]:
    """NVML and the driver, or the declared inventory, or the node's ``gpus_file``."""
    probe = nvml(ctx)
    seen = f"driver {probe.driver or '?'}, {gpu_list(probe.gpus)}"
    cfg, node = ctx.config, ctx.node
    spec = cfg.nodes.get(node) if cfg is not None and node is not None else None
    if cfg is None or spec is None or node is None:  # no config, or no model runs here
        if probe.error:
            return [Result("gpus", "info", f"no NVIDIA driver here (NVML: {probe.error})")]
        return [Result("gpus", "ok", f"NVML: {seen}")]
    if spec.gpus_file is not None:
        read = node_gpus(ctx)
        if not read:
            return [
                Result(
                    "gpus",
                    "warn",
                    f"nodes.{node}.gpus_file {spec.gpus_file} has no GPU readings (missing or "
                    "not valid): the node has no GPUs until its program writes them",
                    "start the program that writes it; docs/config.md shows its JSON",
                )
            ]
        return [Result("gpus", "ok", f"from {spec.gpus_file}: {gpu_list(read)}")]
    if isinstance(spec.gpus, list):
        return _declared(node, spec, probe)
    if probe.error is None and probe.gpus:
        return [Result("gpus", "ok", f"NVML: {seen}")]
    why = f"NVML cannot load ({probe.error})" if probe.error else f"NVML sees no GPU ({seen})"
    placed = [m for m in ctx.models_here if cfg.models[m].gpus]
    if placed:  # they name GPU indices: they cannot start on none
        return [
            Result(
                "gpus",
                "fail",
                f"{why}: node {node}'s GPUs are read from NVML, so {', '.join(placed)} "
                "(placed on GPUs by `gpus:`) cannot start",
                f"install the NVIDIA driver (nvidia-smi must work), or declare the GPUs under "
                f"nodes.{node}.gpus",
            )
        ]
    return [
        Result(
            "gpus",
            "warn",
            f"{why}: node {node} has no GPU for modelyard; its models run on the CPU",
            f"install the NVIDIA driver (nvidia-smi must work); a machine without an NVIDIA "
            f"GPU can say so with `gpus: []` under nodes.{node}",
        )
    ]


def _declared(node: str, spec: Node, probe: Nvml) -> list[Result]:
    assert isinstance(spec.gpus, list)
    declared = ", ".join(f"GPU {g.index} {g.name} {format_bytes(g.memory)}" for g in spec.gpus)
    if probe.error:
        return [
            Result(
                "gpus",
                "info",
                f"no NVIDIA driver (NVML: {probe.error}): declared inventory in use: "
                f"{declared or 'no GPU'}",
            )
        ]
    found = [
        Result(
            "gpus",
            "info",
            f"declared inventory in use: {declared or 'no GPU'}; NVML "
            f"sees driver {probe.driver or '?'}, {gpu_list(probe.gpus)}",
        )
    ]
    read = {g.index: g for g in probe.gpus}
    for g in spec.gpus:
        real = read.get(g.index)
        if real is not None and g.memory > real.total * 1.02:  # 2%: rounding in the file
            found.append(
                Result(
                    "gpus",
                    "warn",
                    f"GPU {g.index} is declared with {format_bytes(g.memory)} but NVML reads "
                    f"{format_bytes(real.total)}: placement trusts the declaration",
                    f"correct nodes.{node}.gpus, or write `gpus: auto` to read them",
                )
            )
    return found
