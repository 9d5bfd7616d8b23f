"""A model across nodes (``models.NAME.span``): its parts start before it and stop after it,
and it lives only while every part does.

llama.cpp's RPC backend: each node in ``span`` runs an rpc-server (``rpc_part.py``); the
model's llama-server, on its own node, gets them with ``--rpc`` and a ``--tensor-split``
(``split``: each part's devices by their free memory, then its own GPUs). Together they
are one instance to the scheduler: stopping, swapping and TTL stop the parts too, and
``watch`` (each round of the cluster watch) fails the instance whose part ended, whose
part's node is unreachable or gated, and stops parts that outlived their instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelyard.config import Config
from modelyard.engines.base import Upstream
from modelyard.errors import StartError
from modelyard.lifecycle import RESIDENT, State
from modelyard.machine import Machine
from modelyard.nodes import NodeHandle
from modelyard.placement import Gpu, Need, Offer, Resident, choose_parts, free_on, slow_parts
from modelyard.rpc_part import Parts
from modelyard.units import format_bytes

if TYPE_CHECKING:
    from modelyard.scheduler import Scheduler

log = logging.getLogger("modelyard.span")


@dataclass(frozen=True)
class Placed:
    """Where a model across nodes runs now, recorded at its start: the nodes of its parts
    (``--rpc`` order), and what it holds on the GPUs of each node, its own included, by
    the split (a resident's ``parts`` to placement: what other models fit beside, and
    what to stop to make room)."""

    nodes: tuple[str, ...]
    needs: tuple[Need, ...] = ()


Placements = dict[str, Placed]  # model → where it runs now (the scheduler keeps it)


def candidates(config: Config, model: str) -> tuple[str, ...]:
    """The nodes that may hold a part of ``model``: its ``span``, or for ``auto`` every
    other node."""
    spec = config.models.get(model)
    if spec is None or not spec.spans_auto:
        return spec.parts_on if spec is not None else ()
    return tuple(n for n in config.nodes if n != config.node_of(model))


def room(
    gpus: Sequence[Gpu], machine: Machine | None, reserve: int, held: Iterable[Resident] = ()
) -> list[int]:
    """What each device of a node may take of a model across nodes: each GPU's free memory
    less the node's reserve and what our models hold there (``held``: declared GPUs read no
    use); without GPUs, its one CPU device: available RAM less the reserve."""
    if gpus:
        held = list(held)
        return [max(free_on(g, held, reserve), 0) for g in gpus]
    ram = machine.memory_available if machine and machine.memory_available else 0
    return [max(ram - reserve, 0)]


def devices(gpus: Sequence[Gpu]) -> list[int | None]:
    """A node's devices in ``room``'s order: its GPUs' indices, or its one CPU device."""
    return [g.index for g in gpus] if gpus else [None]


def holds(
    total: int | None, where: Sequence[tuple[str, int | None]], split: Sequence[float]
) -> tuple[Need, ...]:
    """What a model across nodes holds on each node's GPUs: ``total`` by each device's share of the
    ``split`` (``where``: each device's node and GPU, in its order); RAM is not placed."""
    how = f"its share of {format_bytes(total)} by the split" if total else "unknown: no `memory`"
    per_node: dict[str, dict[int, int]] = {}
    for (node, index), share in zip(where, split, strict=True):
        if index is not None:
            per_node.setdefault(node, {})[index] = int((total or 0) * share)
    return tuple(Need(node, per_gpu, how=how) for node, per_gpu in per_node.items())


def tensor_split(parts: Sequence[Sequence[int]], own: Sequence[int]) -> tuple[float, ...]:
    """llama-server's ``--tensor-split``: each part's devices (in ``--rpc`` order), then its
    own GPUs, weighted by what each may take (``room``)."""
    weights = [max(w, 1) for devices in (*parts, own) for w in devices]
    total = sum(weights)
    return tuple(round(w / total, 4) for w in weights)


async def start(
    nodes: Mapping[str, NodeHandle],
    config: Config,
    model: str,
    node: str,
    timeout: float,
    placements: Placements,
    held: Iterable[Resident] = (),
) -> tuple[Upstream, int | None]:
    """Start ``model`` on ``node``: its parts first (at once), then its llama-server given
    them. A part that fails stops the others, and the error names its node. ``held``: what
    our other models hold now, which the split leaves them."""
    main = nodes[node]
    spec = config.models[model]
    others = [r for r in held if r.model != model]
    # Its own GPUs: the ones it may use there (CUDA_VISIBLE_DEVICES shows it those alone).
    mine = [g for g in main.gpus() if spec.gpus is None or g.index in spec.gpus]
    own = room(mine, None, config.nodes[node].reserve, others) if mine else []
    if spec.spans_auto:
        span = _choose(nodes, config, model, sum(own), others)
    else:
        span = spec.parts_on
    if not span:
        return await main.start(model, timeout)
    links = {n: config.nodes[n].link_gbps for n in span}
    for slow in slow_parts(links, config.placement.min_link_gbps):
        log.warning("%s: %s", model, slow)
    for name in span:
        view = nodes[name].view()
        if not view.reachable:
            raise StartError(f"its part on node {name} cannot start: the node is unreachable")
        if view.kind != "open":
            raise StartError(f"its part on node {name} cannot start: node in mode {view.mode}")
    parts = [
        room(nodes[n].gpus(), nodes[n].machine(), config.nodes[n].reserve, others) for n in span
    ]
    if spec.memory is not None and not spec.spans_auto:
        _fits(spec.memory, dict(zip((*span, node), map(sum, (*parts, own)), strict=True)))
    split = tensor_split(parts, own)
    where = [(n, i) for n in span for i in devices(nodes[n].gpus())]
    where += [(node, g.index) for g in mine]
    estimate = main.need(model)  # the whole model's on its node's GPUs (GGUF), if it has any
    total = spec.memory or (sum(estimate.per_gpu.values()) if estimate else None)
    placements[model] = Placed(span, holds(total, where, split))
    results = await asyncio.gather(
        *(nodes[n].start_part(model, timeout) for n in span), return_exceptions=True
    )
    failed = [(n, r) for n, r in zip(span, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        await stop_parts(nodes, config, model, "another part failed to start", placements)
        part, exc = failed[0]
        raise StartError(f"its part on node {part} failed to start: {exc}") from exc
    addresses = tuple(str(r) for r in results)
    try:
        return await main.start(model, timeout, Parts(addresses, split))
    except BaseException as exc:
        await stop_parts(nodes, config, model, "its llama-server failed to start", placements)
        unanswered = _unanswered(exc, dict(zip(addresses, span, strict=True)), node)
        if unanswered is not None:
            raise StartError(unanswered, getattr(exc, "tail", None)) from exc
        raise


def _unanswered(exc: BaseException, parts: Mapping[str, str], node: str) -> str | None:
    """A llama-server that could not reach a part (ggml-rpc: "Failed to connect to
    HOST:PORT"): which part, on which node, and what to check."""
    said = "\n".join([str(exc), *getattr(exc, "tail", [])])
    for address in re.findall(r"Failed to connect to (\S+)", said):
        if address in parts:
            return (
                f"its part on node {parts[address]} ({address}) does not answer its "
                f"llama-server on node {node}: nothing reaches that address from there (a "
                f"firewall, or nodes.{parts[address]}.address not one {node} can route to)"
            )
    return None


def _fits(need: int, free: Mapping[str, int]) -> None:
    """Refuse a named span whose nodes' ``free`` memory cannot hold ``need``, naming each
    node's share of it (as the split would give it) and what it has free."""
    total = sum(free.values())
    if need > total:
        each = ", ".join(
            f"{n} {format_bytes(int(need * f / max(total, 1)))} of {format_bytes(f)} free"
            for n, f in free.items()
        )
        raise StartError(f"does not fit across its nodes: needs {format_bytes(need)}: {each}")


def _choose(
    nodes: Mapping[str, NodeHandle], config: Config, model: str, own: int, held: list[Resident]
) -> tuple[str, ...]:
    """``span: auto``: the other open nodes that make room for its ``memory``, fewest and
    fastest first (``placement.choose_parts``)."""
    need = config.models[model].memory
    assert need is not None, "validated: span: auto needs memory"
    offers = []
    for name in candidates(config, model):
        view, spec = nodes[name].view(), config.nodes[name]
        if view.reachable and view.kind == "open":
            free = sum(room(nodes[name].gpus(), nodes[name].machine(), spec.reserve, held))
            offers.append(Offer(name, free, spec.link_gbps))
    picked = choose_parts(need, own, offers)
    if isinstance(picked, str):
        raise StartError(f"does not fit across the open nodes: {picked}")
    return picked


async def stop(
    nodes: Mapping[str, NodeHandle],
    config: Config,
    model: str,
    node: str,
    reason: str,
    placements: Placements,
) -> None:
    """Stop ``model``'s llama-server on ``node``, then its parts."""
    try:
        await nodes[node].stop(model, reason)
    finally:
        await stop_parts(nodes, config, model, reason, placements)


async def stop_parts(
    nodes: Mapping[str, NodeHandle],
    config: Config,
    model: str,
    reason: str,
    placements: Placements,
    where: Sequence[str] | None = None,
) -> None:
    """Stop ``model``'s parts: on the nodes that hold them now, or ``where``."""
    placed = placements.get(model)
    for name in (placed.nodes if placed else ()) if where is None else where:
        with contextlib.suppress(Exception):  # an unreachable node's parts die with its agent
            await nodes[name].stop_part(model, reason)
    placements.pop(model, None)


async def watch(nodes: Mapping[str, NodeHandle], config: Config, scheduler: Scheduler) -> None:
    """One round: a ready instance whose part is gone (ended, its node unreachable or gated)
    fails, its llama-server and other parts stopped; parts left without an instance stop."""
    placements = scheduler.parts
    for model in config.models:
        may = candidates(config, model)
        inst = scheduler.instances.get(model)
        if not may or inst is None:
            continue
        if inst.state not in RESIDENT:
            left = [n for n in may if nodes[n].part_running(model)]
            if left:
                await stop_parts(
                    nodes, config, model, "its instance is not running", placements, left
                )
            continue
        if inst.state is not State.READY:
            continue
        placed = placements.get(model)
        why = _broken(nodes, model, placed.nodes if placed else ())
        if why is not None:
            await stop(nodes, config, model, inst.node, why, placements)
            scheduler.on_exit(model, why)


def _broken(nodes: Mapping[str, NodeHandle], model: str, span: Sequence[str]) -> str | None:
    for name in span:
        view = nodes[name].view()
        if not view.reachable:
            return f"its part's node {name} is unreachable"
        if view.kind in ("gated", "drained"):
            return f"its part's node {name} entered mode {view.mode}"
        if not nodes[name].part_running(model):
            return f"its part on node {name} ended"
    return None


async def close(nodes: Mapping[str, NodeHandle], config: Config, placements: Placements) -> None:
    """The gateway stops: its own node's engines stop with it, so the parts of the models
    they ran stop too (a model whose llama-server runs on an agent keeps running there)."""
    local = config.local_node
    mine = [m for m in config.models if candidates(config, m) and config.node_of(m) == local]
    stopping = (
        stop_parts(nodes, config, m, "the gateway stopped", placements, candidates(config, m))
        for m in mine
    )
    await asyncio.gather(*stopping)
