"""Memory estimates: what a model needs, from GGUF metadata or from what the config says (pure).

For a GGUF file: the weights (the file's size) + the KV cache at f16 for the configured
context (all slots together) + a stated overhead per GPU for compute buffers and the CUDA
context. Sliding-window layers are counted at the full context: the estimate errs high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelyard.placement import Gpu, Need, slow_link, slow_parts, split
from modelyard.units import format_bytes

if TYPE_CHECKING:  # the config's loader checks placement with this module: no cycle
    from modelyard.config.schema import Config

KV_BYTES = 2  # f16 cache, llama.cpp's default


@dataclass(frozen=True)
class GgufFacts:
    """What the estimate needs from a GGUF file's metadata."""

    size_bytes: int  # all shards
    architecture: str | None = None
    context_length: int | None = None  # trained
    block_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    expert_count: int = 0

    @property
    def moe(self) -> bool:
        return self.expert_count > 1


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    overhead: int
    how: str

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def kv_cache_bytes(facts: GgufFacts, context: int) -> int:
    """f16 K and V for every layer and every position of ``context``."""
    if not (facts.block_count and facts.head_count_kv and facts.key_length):
        return 0
    per_token = facts.head_count_kv * (facts.key_length + (facts.value_length or facts.key_length))
    return facts.block_count * context * per_token * KV_BYTES


def estimate_gguf(facts: GgufFacts, context: int | None, overhead: int) -> Estimate:
    ctx = context or facts.context_length or 4096
    kv = kv_cache_bytes(facts, ctx)
    how = (
        f"GGUF estimate: weights {format_bytes(facts.size_bytes)} + KV cache "
        f"{format_bytes(kv)} for {ctx} tokens + overhead {format_bytes(overhead)}"
    )
    return Estimate(facts.size_bytes, kv, overhead, how)


def need_for(config: Config, name: str, node_gpus: Sequence[Gpu], facts: GgufFacts | None) -> Need:
    """Memory ``name`` needs on each GPU of its node: declared, by share, or estimated."""
    model = config.models[name]
    node = config.node_of(name)
    gpus = list(model.gpus) if model.gpus is not None else [g.index for g in node_gpus]
    moe = model.moe if model.moe is not None else bool(facts and facts.moe)
    if not gpus:
        return Need(node, {}, moe, "CPU only")
    if model.memory_share is not None:
        totals = {g.index: g.total for g in node_gpus}
        per_gpu = {i: int(model.memory_share * totals.get(i, 0)) for i in gpus}
        return Need(node, per_gpu, moe, f"{model.memory_share:.0%} of each GPU's memory")
    if model.memory is not None:
        return Need(node, split(model.memory, gpus, model.tensor_split), moe, "declared")
    if model.gguf is not None and facts is not None:
        overhead = config.placement.overhead
        est = estimate_gguf(facts, model.context_size, 0)
        per_gpu = split(est.total, gpus, model.tensor_split)
        how = est.how.replace("+ overhead 0 B", f"+ {format_bytes(overhead)} per GPU")
        return Need(node, {i: b + overhead for i, b in per_gpu.items()}, moe, how)
    return Need(node, dict.fromkeys(gpus, 0), moe, "unknown: declare `memory` to have it checked")


def placement_problems(config: Config) -> list[tuple[tuple[str | int, ...], str, bool]]:
    """What the config alone shows about placement on declared GPUs: (path, message, fatal).

    A need that exceeds a declared GPU can never be met; an MoE model across a slow link is
    refused or warned about, as ``placement.moe_on_slow_link`` says.
    """
    problems: list[tuple[tuple[str | int, ...], str, bool]] = []
    for name in config.models:
        spec = config.models[name]
        span = spec.parts_on or (
            (n for n in config.nodes if n != config.node_of(name)) if spec.spans_auto else ()
        )
        span = tuple(span)
        if span:
            problems += _span_problems(config, name, span)
            continue
        node = config.nodes.get(config.node_of(name))
        if node is None or not isinstance(node.gpus, list):
            continue  # NVML nodes are checked when they start a model
        gpus = [
            Gpu(config.node_of(name), g.index, g.name, g.memory, 0, g.pcie_gen, g.pcie_width)
            for g in node.gpus
        ]
        need = need_for(config, name, gpus, None)
        for gpu in gpus:
            wanted = need.per_gpu.get(gpu.index, 0)
            if wanted > gpu.total - node.reserve:
                problems.append(
                    (
                        ("models", name),
                        f"needs {format_bytes(wanted)} on GPU {gpu.index} ({gpu.name}), which has "
                        f"{format_bytes(gpu.total - node.reserve)} for models: it can never start",
                        True,
                    )
                )
        link = slow_link(need, gpus, config.placement.slow_link_width)
        if link:
            fatal = config.placement.moe_on_slow_link == "refuse"
            problems.append((("models", name, "gpus"), link, fatal))
    return problems


def _span_problems(
    config: Config, name: str, span: tuple[str, ...]
) -> list[tuple[tuple[str | int, ...], str, bool]]:
    """A model across nodes: what its rpc-servers expose, and whether its declared memory
    fits in all its nodes' declared GPUs (else it is checked at start, on what is free)."""
    exposed = (
        f"its parts' rpc-servers on {', '.join(span)} listen on those nodes' addresses (an "
        "agent's host, or nodes.NAME.address) with no authentication: whoever reaches their "
        "ports can use those devices; keep them on a trusted network (docs/multi-node.md)"
    )
    problems: list[tuple[tuple[str | int, ...], str, bool]] = [
        (("models", name, "span"), exposed, False)
    ]
    if config.models[name].parts_on:  # ``auto`` chooses at start, and warns then
        links = {n: config.nodes[n].link_gbps for n in span if n in config.nodes}
        slow = slow_parts(links, config.placement.min_link_gbps)
        problems += [(("models", name, "span"), why, False) for why in slow]
    need = config.models[name].memory
    nodes = [config.node_of(name), *span]
    declared = [config.nodes.get(n) for n in nodes]
    if need is None or any(
        d is None or not isinstance(d.gpus, list) or not d.gpus for d in declared
    ):
        return problems  # GPUs read at run time, or a part in RAM: checked at start
    room = {
        n: sum(max(g.memory - d.reserve, 0) for g in d.gpus)
        for n, d in zip(nodes, declared, strict=True)
        if d is not None and isinstance(d.gpus, list)
    }
    if need > sum(room.values()):
        each = ", ".join(f"{n} {format_bytes(r)}" for n, r in room.items())
        why = (
            f"needs {format_bytes(need)} across its nodes, whose GPUs have {each} for "
            "models: it can never start"
        )
        problems.append((("models", name, "span"), why, True))
    return problems
