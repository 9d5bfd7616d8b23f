"""Doctor's checks of this node's models: their GGUF weights are there and readable, and each
model fits its GPUs as read now (or this machine's memory when it runs on the CPU).
"""

from __future__ import annotations

from pathlib import Path

from modelyard.config import Config
from modelyard.demo import CHAT_DEFAULT, EMBED_DEFAULT, GEMMA_DEFAULT
from modelyard.doctor.gpus import gpu_list, node_gpus, nvml
from modelyard.doctor.result import Context, Result
from modelyard.estimate import GgufFacts, estimate_gguf, need_for
from modelyard.gguf_file import read_facts, shards
from modelyard.machine import MachineSampler
from modelyard.placement import Gpu, free_on, slow_link
from modelyard.units import format_bytes


def _facts(path: Path | None) -> GgufFacts | None:
    if path is None:
        return None
    try:
        return read_facts(path)
    except (OSError, ValueError):
        return None


def check_weights(ctx: Context) -> list[Result]:
    """Each GGUF of this node's models is there, readable, and a GGUF file."""
    cfg = ctx.config
    assert cfg is not None
    found = []
    for m in ctx.models_here:
        path = cfg.models[m].gguf
        if path is not None:
            found.append(_weights(m, path))
    return found


def _weights(model: str, path: Path) -> Result:
    name = f"weights {model}"
    files = shards(path)
    missing = [p for p in files if not p.is_file()]
    if missing:
        demo = {CHAT_DEFAULT.name, GEMMA_DEFAULT.name, EMBED_DEFAULT.name}
        fix = (
            "python -m modelyard.demo writes the demo's model files (scripts/setup.sh runs it)"
            if path.name in demo
            else f"download it there, or point models.{model}.weights at the file"
        )
        what = "not a file" if missing[0].exists() else "not found"
        more = f" ({len(missing)} of {len(files)} shards)" if len(files) > 1 else ""
        return Result(name, "fail", f"weights file {what}: {missing[0]}{more}", fix)
    try:
        facts = read_facts(path)
    except OSError as exc:
        return Result(
            name,
            "fail",
            f"cannot read {path}: {exc.strerror or exc}",
            "let the user that runs modelyard read it (chmod, chown, or move it)",
        )
    except (ValueError, EOFError, UnicodeError) as exc:
        return Result(
            name,
            "fail",
            f"{path} is not a GGUF file llama.cpp can load: {exc}",
            "the weights must be a GGUF (llama.cpp's format): download or convert one",
        )
    arch = facts.architecture or "architecture unknown"
    return Result(name, "ok", f"{path} ({format_bytes(facts.size_bytes)}, {arch})")


def check_memory(ctx: Context) -> list[Result]:
    """Each model of this node fits its GPUs as read now (or this machine's memory)."""
    cfg, node = ctx.config, ctx.node
    assert cfg is not None
    if node is None:
        return []
    gpus = node_gpus(ctx)
    spec = cfg.nodes[node]
    unread = spec.gpus == "auto" and spec.gpus_file is None and nvml(ctx).error is not None
    found = [_fits(cfg, node, m, gpus, unread) for m in ctx.models_here]
    return [r for r in found if r is not None]


def _fits(cfg: Config, node: str, model: str, gpus: list[Gpu], unread: bool) -> Result | None:
    name, spec = f"memory {model}", cfg.models[model]
    if spec.parts_on or spec.spans_auto:
        return Result(
            name,
            "info",
            "spans nodes: checked at each start against the free memory of every node it uses",
        )
    facts = _facts(spec.gguf)
    need = need_for(cfg, model, gpus, facts)
    if not need.per_gpu:
        return _fits_ram(name, cfg, model, facts)
    known = {g.index: g for g in gpus}
    absent = sorted(set(need.per_gpu) - set(known))
    if absent and unread:  # the gpus check already fails, and says why
        return Result(name, "info", "not checked: this node's GPUs could not be read")
    if absent:
        return Result(
            name,
            "fail",
            f"placed on GPU {', '.join(map(str, absent))}, which node {node} does not have "
            f"({gpu_list(gpus)})",
            f"fix models.{model}.gpus",
        )
    if need.how.startswith("unknown"):
        return Result(name, "info", f"need {need.how}")
    reserve = cfg.nodes[node].reserve
    lines, short = [], False
    for index, wanted in sorted(need.per_gpu.items()):
        gpu = known[index]
        room = gpu.total - reserve
        free = free_on(gpu, (), reserve)  # less what NVML reads in use; none when declared
        lines.append(f"{format_bytes(wanted)} of {format_bytes(free)} free on GPU {index}")
        if wanted > room:
            return Result(
                name,
                "fail",
                f"needs {format_bytes(wanted)} on GPU {index} ({gpu.name}), which has "
                f"{format_bytes(room)} for models: it can never start ({need.how})",
                f"a smaller quantisation, a shorter models.{model}.context, more GPUs "
                f"(models.{model}.gpus), or `memory:` if the estimate is wrong",
            )
        short = short or wanted > free
    link = slow_link(need, [known[i] for i in need.per_gpu], cfg.placement.slow_link_width)
    if link:
        fatal = cfg.placement.moe_on_slow_link == "refuse"
        return Result(
            name, "fail" if fatal else "warn", link, f"place models.{model}.gpus on wide links"
        )
    said = f"needs {'; '.join(lines)} ({need.how})"
    if short:
        return Result(
            name,
            "warn",
            f"{said}: not enough free now; other programs (or running engines) hold the rest",
            "it starts once that memory is free; modelyard stops only its own idle models "
            "to make room (nvidia-smi shows who holds it)",
        )
    return Result(name, "ok", said)


def _fits_ram(name: str, cfg: Config, model: str, facts: GgufFacts | None) -> Result | None:
    spec = cfg.models[model]
    if spec.memory is not None:
        wanted = spec.memory
    elif facts is not None:
        wanted = estimate_gguf(facts, spec.context_size, 0).total
    else:
        return None  # a speech worker, a command: nothing says what it needs
    machine = MachineSampler().sample()
    total, free = machine.memory_total, machine.memory_available
    if total is not None and wanted > total:
        return Result(
            name,
            "fail",
            f"CPU only: needs ~{format_bytes(wanted)}, more than this machine's "
            f"{format_bytes(total)} of memory",
            f"a smaller quantisation or a shorter models.{model}.context",
        )
    if free is not None and wanted > free:
        return Result(
            name,
            "warn",
            f"CPU only: needs ~{format_bytes(wanted)}; {format_bytes(free)} available now",
            "stop other programs, or run it where there is more memory",
        )
    room = f" of {format_bytes(free)} available" if free is not None else ""
    return Result(name, "ok", f"CPU only: needs ~{format_bytes(wanted)}{room}")
