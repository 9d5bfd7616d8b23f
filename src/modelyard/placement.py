"""Placement: what a model needs on which GPUs, whether it fits, what must stop first (pure).

Two limits, checked in this order:

* the swap group: its members never run together (a pinned member blocks the others);
* memory: on every GPU a model uses, its need must fit in what is free: the GPU's total,
  less the node's reserve, less what our other instances need there, less what other
  programs use (NVML's used figure beyond ours). To make room, the instances sharing that
  GPU stop in this order: idle before busy, then least recently used first; pinned never.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from modelyard.units import format_bytes


@dataclass(frozen=True)
class Gpu:
    """One GPU of one node, as NVML reads it or as the config declares it."""

    node: str
    index: int
    name: str
    total: int  # bytes
    used: int = 0  # bytes in use by anything, ours included (NVML); 0 when declared
    pcie_gen: int | None = None
    pcie_width: int | None = None
    utilization: int | None = None  # percent, NVML only
    temperature: int | None = None  # °C, NVML only
    power: float | None = None  # watts, NVML only
    measured: bool = False  # read from NVML (``used`` is real), not declared

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.name}) on {self.node}"


@dataclass(frozen=True)
class Need:
    """Memory a model needs on each GPU of its node; empty ``per_gpu`` runs on the CPU."""

    node: str
    per_gpu: Mapping[int, int] = field(default_factory=dict)
    moe: bool = False
    how: str = ""  # how the figure was reached, shown with every refusal


@dataclass(frozen=True)
class Resident:
    """A model that holds resources now (starting, ready, draining or stopping)."""

    model: str
    pinned: bool
    swap_group: str | None
    need: Need | None = None
    busy: bool = False
    last_used: float = 0.0
    parts: tuple[Need, ...] = ()  # a model across nodes: what it holds on each node's GPUs

    def on(self, node: str, index: int) -> int | None:
        """Bytes it holds on GPU ``index`` of ``node``; None where it does not use it."""
        needs = (self.need, *self.parts) if self.need is not None else self.parts
        held = [n.per_gpu[index] for n in needs if n.node == node and index in n.per_gpu]
        return sum(held) if held else None


@dataclass(frozen=True)
class Eviction:
    """What starting ``target`` requires: the residents to stop, or why it cannot start."""

    target: str
    victims: tuple[str, ...] = ()
    blocked_by: tuple[str, ...] = ()
    reason: str | None = None  # set when it cannot start at all

    @property
    def possible(self) -> bool:
        return self.reason is None

    def explain(self) -> str:
        if self.reason is not None:
            return self.reason
        if self.victims:
            return f"{self.target} starts after {', '.join(self.victims)} stop(s)"
        return f"{self.target} starts beside what runs"


@dataclass(frozen=True)
class Inventory:
    """Every GPU known, by (node, index), and each node's reserve per GPU."""

    gpus: Mapping[tuple[str, int], Gpu] = field(default_factory=dict)
    reserve: Mapping[str, int] = field(default_factory=dict)

    def of(self, node: str) -> list[Gpu]:
        return sorted((g for g in self.gpus.values() if g.node == node), key=lambda g: g.index)


def held_by(gpu: Gpu, residents: Iterable[Resident]) -> int:
    """Bytes our ``residents`` need on ``gpu``."""
    return sum(r.on(gpu.node, gpu.index) or 0 for r in residents)


def other_programs(gpu: Gpu, residents: Iterable[Resident]) -> int:
    """What programs other than ours use on ``gpu``: NVML's used figure counts ours too."""
    return max(0, gpu.used - held_by(gpu, residents))


def free_on(
    gpu: Gpu, residents: Iterable[Resident], reserve: int = 0, others: int | None = None
) -> int:
    """Bytes free on ``gpu`` for a new instance, given who holds it now.

    ``others`` is other programs' use; by default worked out from ``residents``, which
    must then be every resident on the GPU.
    """
    residents = list(residents)
    if others is None:
        others = other_programs(gpu, residents)
    return gpu.total - reserve - held_by(gpu, residents) - others


def plan_eviction(
    target: str,
    target_group: str | None,
    residents: Mapping[str, Resident],
    need: Need | None = None,
    inventory: Inventory | None = None,
) -> Eviction:
    """Residents that must stop before ``target`` may start, or why it never can now."""
    others = {m: r for m, r in residents.items() if m != target}
    victims: list[str] = []
    if target_group is not None:
        group = sorted(m for m, r in others.items() if r.swap_group == target_group)
        pinned = tuple(m for m in group if others[m].pinned)
        if pinned:
            return Eviction(
                target,
                blocked_by=pinned,
                reason=f"{target} cannot start: pinned {', '.join(pinned)} holds its swap group "
                f"{target_group!r}",
            )
        victims += group
    if need is None or not need.per_gpu or inventory is None:
        return Eviction(target, tuple(victims))
    for index, wanted in sorted(need.per_gpu.items()):
        gpu = inventory.gpus.get((need.node, index))
        if gpu is None:
            return Eviction(target, reason=f"{target}: GPU {index} does not exist on {need.node}")
        staying = [r for m, r in others.items() if m not in victims]
        reserve = inventory.reserve.get(need.node, 0)
        outside = other_programs(gpu, others.values())  # from everyone, victims included
        if wanted > gpu.total - reserve - outside:
            return Eviction(
                target,
                reason=(
                    f"{target} does not fit on {gpu.label} even alone: needs "
                    f"{format_bytes(wanted)} ({need.how}), the GPU has {format_bytes(gpu.total)}"
                    + (f", {format_bytes(outside)} used by other programs" if outside else "")
                    + (f", {format_bytes(reserve)} reserved" if reserve else "")
                ),
            )
        short = wanted - free_on(gpu, staying, reserve, outside)
        if short <= 0:
            continue
        sharing = [r for r in staying if r.on(need.node, index) is not None]
        for r in sorted(sharing, key=lambda r: (r.pinned, r.busy, r.last_used)):
            if short <= 0 or r.pinned:
                break
            victims.append(r.model)
            short -= r.on(need.node, index) or 0
        if short > 0:
            left = [r for m, r in others.items() if m not in victims]
            free = free_on(gpu, left, reserve, outside)
            pinned = tuple(r.model for r in sharing if r.pinned)
            held = f"; pinned {', '.join(pinned)} stay(s)" if pinned else ""
            return Eviction(
                target,
                blocked_by=pinned,
                reason=(
                    f"{target} does not fit on {gpu.label}: needs {format_bytes(wanted)} "
                    f"({need.how}), {format_bytes(max(free, 0))} free of "
                    f"{format_bytes(gpu.total)}{held}"
                ),
            )
    return Eviction(target, tuple(dict.fromkeys(victims)))


def slow_link(need: Need, gpus: Sequence[Gpu], min_width: int) -> str | None:
    """Why an MoE model must not span a GPU on a narrow PCIe link, or None."""
    if not need.moe or len(need.per_gpu) < 2:
        return None
    for gpu in gpus:
        if gpu.index in need.per_gpu and gpu.pcie_width is not None and gpu.pcie_width < min_width:
            gen = f"PCIe {gpu.pcie_gen}.0 " if gpu.pcie_gen else "PCIe "
            return (
                f"an MoE model split across {len(need.per_gpu)} GPUs would use {gpu.label} on "
                f"a {gen}x{gpu.pcie_width} link (slower than x{min_width}): give it GPUs on "
                "fast links only"
            )
    return None


def split(total: int, gpus: Sequence[int], tensor_split: Sequence[float] | None) -> dict[int, int]:
    """``total`` bytes over ``gpus`` in proportion to ``tensor_split`` (equal parts by default)."""
    if not gpus:
        return {}
    weights = list(tensor_split) if tensor_split else [1.0] * len(gpus)
    whole = sum(weights)
    return {g: int(total * w / whole) for g, w in zip(gpus, weights, strict=True)}


def slow_parts(links: Mapping[str, float | None], floor: float) -> list[str]:
    """What a model across nodes is told of each part whose node's link (``links``: as the
    config says, None where it does not) is slower than ``floor`` Gbit/s."""
    return [
        f"its part on node {node} crosses a {gbps:g} Gbit/s link (slower than "
        f"placement.min_link_gbps {floor:g}): every token waits on it"
        for node, gbps in links.items()
        if gbps is not None and gbps < floor
    ]


@dataclass(frozen=True)
class Offer:
    """What another node offers a part of a model across nodes (``span: auto``)."""

    node: str
    free: int  # bytes its part may take: its GPUs' free memory, or its RAM without GPUs
    gbps: float | None = None  # its link, as the config says (None: not said)


def choose_parts(need: int, own: int, offers: Sequence[Offer]) -> tuple[str, ...] | str:
    """The nodes whose parts, with ``own`` (what the model's node holds), make room for
    ``need``: the fewest; among as many, the one whose slowest link is fastest (a link not
    said counts as slowest), then the most free. Or why no choice does."""
    if need <= own:
        return ()
    for k in range(1, len(offers) + 1):
        fits = [c for c in combinations(offers, k) if own + sum(o.free for o in c) >= need]
        if fits:
            best = max(fits, key=lambda c: (min(o.gbps or 0.0 for o in c), sum(o.free for o in c)))
            return tuple(o.node for o in best)
    each = ", ".join(f"{o.node} {format_bytes(o.free)}" for o in offers) or "no other node open"
    return f"needs {format_bytes(need)}; its node has {format_bytes(own)} free, the others: {each}"
