"""The API's views: the JSON of models, instances, nodes, GPUs and the gateway's status.

One place for what ``/v1/models``, ``/admin/*`` and an agent's status show, so the
console, the CLI and ``modelyard top`` read the same shapes, built from the live objects
without changing them.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from modelyard import __version__
from modelyard.config import Config
from modelyard.instance import Instance, slots_of
from modelyard.lifecycle import State
from modelyard.machine import Machine
from modelyard.nodes import LocalNode, NodeHandle, RemoteNode
from modelyard.placement import Gpu, Need

if TYPE_CHECKING:
    from modelyard.scheduler import Scheduler
    from modelyard.span import Placed


def gpu_view(gpu: Gpu) -> dict[str, Any]:
    return {
        "index": gpu.index,
        "name": gpu.name,
        "memory_total": gpu.total,
        "memory_used": gpu.used,
        "utilization": gpu.utilization,
        "temperature": gpu.temperature,
        "power": gpu.power,
        "measured": gpu.measured,
        "pcie_gen": gpu.pcie_gen,
        "pcie_width": gpu.pcie_width,
    }


def need_view(need: Need) -> dict[str, Any]:
    return {
        "per_gpu": {str(k): v for k, v in need.per_gpu.items()},
        "moe": need.moe,
        "how": need.how,
    }


def node_view(node: NodeHandle, config: Config) -> dict[str, Any]:
    """A node: where it is, whether it answers, its mode, its GPUs and its machine."""
    view = node.view()
    out: dict[str, Any] = {"name": node.name}
    if isinstance(node, RemoteNode):
        out |= {"url": node.url, "reachable": node.reachable, "error": node.error,
                "last_seen": node.last_seen, "auto_mode": node.auto}  # fmt: skip
    else:
        auto = node.auto_view() if isinstance(node, LocalNode) else None
        out |= {"url": None, "reachable": True, "auto_mode": auto}
    return out | {
        "mode": view.mode,
        "kind": view.kind,
        "modes": {m: s.kind for m, s in config.nodes[node.name].modes.items()},
        "gpus": [gpu_view(g) for g in node.gpus()],
        "machine": machine_view(node),
    }


def machine_view(node: NodeHandle) -> dict[str, Any]:
    """The node's CPU and memory: ``cpu_percent`` (busy since the last sample), ``cpus``,
    ``load1``, ``memory_total`` and ``memory_available`` (bytes); each None where it is not
    known (not Linux, an unreachable node, an agent too old to say)."""
    return (node.machine() or Machine()).as_dict()


def instance_view(sched: Scheduler, inst: Instance) -> dict[str, Any]:
    """A model's instance: its state, process, places in use and waiting, and why."""
    now = time.monotonic()
    return {
        "node": sched.config.node_of(inst.model),
        "state": inst.state.value,
        "instance": inst.id if inst.generation else None,
        "pid": inst.pid,
        "upstream": inst.upstream.base_url if inst.upstream else None,
        "in_flight": inst.in_flight,
        "slots": slots_of(sched.config.models[inst.model]),
        "waiting": sched.waiting().get(inst.model, 0),
        "since_s": round(now - inst.since, 1) if inst.generation else None,
        "progress": progress(sched, inst),
        "reason": inst.reason or None,
        "error": inst.error,
        "retry_in_s": round(inst.retry_at - now, 1) if inst.retry_at else None,
        "ttl_left_s": _ttl_left(sched, inst, now),
        "failures": inst.failures,
        "restarts": inst.restarts,
    }


def _ttl_left(sched: Scheduler, inst: Instance, now: float) -> float | None:
    """Seconds until an idle ready instance is stopped for its ``ttl`` (or a client's
    ``keep_alive``); None: not counting."""
    model = sched.config.models[inst.model]
    ttl = inst.keep_alive if inst.keep_alive is not None else model.ttl
    counts = (ttl > 0 or inst.keep_alive == 0) and ttl != math.inf
    if inst.state is not State.READY or inst.in_flight or model.pinned or not counts:
        return None
    return round(max(0.0, inst.last_used + ttl - now), 1)


def progress(sched: Scheduler, inst: Instance) -> float | None:
    """Share of the expected load time that has passed, from this model's last loads."""
    if inst.state is not State.STARTING:
        return None
    typical = sched.store.typical_load_seconds(inst.model)
    if not typical:
        return None
    return round(min((time.monotonic() - inst.since) / typical, 0.99), 2)


def model_view(sched: Scheduler, name: str) -> dict[str, Any]:
    """A model as configured, with its instance."""
    model = sched.config.models[name]
    need = sched.nodes[sched.config.node_of(name)].need(name)
    return {
        "name": name,
        "aliases": model.aliases,
        "engine": model.engine,
        "swap_group": model.swap_group,
        "pinned": model.pinned,
        "ttl_s": model.ttl,
        "need": need_view(need) if need is not None else None,  # GPUs and memory it takes
        "parts": parts_view(sched.parts.get(name)),
        **instance_view(sched, sched.instances[name]),
    }


def parts_view(placed: Placed | None) -> dict[str, Any] | None:
    """A model across nodes that runs: its parts' nodes, and what it holds on each node's
    GPUs (placement counts it there); None otherwise."""
    if placed is None:
        return None
    return {
        "nodes": list(placed.nodes),
        "holds": {n.node: need_view(n) for n in placed.needs},
    }


def kind_of(endpoints: frozenset[str]) -> str:
    """What a model is, by what it serves: ``llm``, ``embeddings``, ``tts``, ``stt`` or
    ``tts+stt`` (a speech worker with both engines)."""
    speaks, hears = "speech" in endpoints, bool({"transcriptions", "translations"} & endpoints)
    if speaks or hears:
        return "+".join(k for k, has in (("tts", speaks), ("stt", hears)) if has)
    return "embeddings" if endpoints == {"embeddings"} else "llm"


def model_cards(sched: Scheduler, started: float) -> list[dict[str, Any]]:
    """/v1/models entries: each model with its true state, the tiers, ``auto``, personas."""
    config = sched.config
    base = {"object": "model", "created": int(started), "owned_by": "modelyard"}
    cards = []
    for name in config.models:
        info = model_view(sched, name)
        shown = {k: info[k] for k in ("aliases", "engine", "state", "progress", "error")}
        spec = config.models[name]
        # What a client needs for a context meter: the window one request gets, and the
        # shares at which the gateway warns and refuses.
        window = {
            "window": spec.window,
            "context_warn": spec.context_warn,
            "context_refuse": spec.context_refuse,
            # Takes OpenAI's reasoning_effort (low, medium, high): the Harmony models do.
            "reasoning_effort": spec.harmony,
        }
        speech = {"voices": list(spec.voices)} if spec.voices else {}
        kind = {"kind": kind_of(spec.endpoints), "endpoints": sorted(spec.endpoints)}
        cards.append({"id": name, **base, **shown, **kind, **window, **speech})
    for tier in config.tiers:
        cards.append({"id": tier, **base, "tier": config.tier_models(tier)})
    if config.policy:
        cards.append({"id": "auto", **base, "policy": [r.name for r in config.policy]})
    for name, persona in config.personas.items():
        # Its system prompt is the operator's, not shown to every client.
        shown = {"use": persona.use, "description": persona.description}
        if persona.voice is not None:
            shown["voice"] = persona.voice.model_dump(exclude_none=True)
        if persona.ears is not None:
            shown["ears"] = persona.ears
        params = persona.params.model_dump(exclude_none=True)
        cards.append({"id": name, **base, "persona": shown | {"params": params}})
    return cards


def status_view(
    sched: Scheduler,
    nodes: dict[str, NodeHandle],
    started: float,
    subscribers: int,
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    """The gateway: its config, nodes, models, slot audit and latest events."""
    config = sched.config
    return {
        "version": __version__,
        "config": str(config.source) if config.source else None,
        "listen": config.listen,
        "state_dir": str(config.state_dir),
        "uptime_s": round(time.time() - started, 1),
        "nodes": [node_view(node, config) for node in nodes.values()],
        "models": [model_view(sched, n) for n in config.models],
        "slot_audit": sched.audit(),
        "gpu_leases": sched.gpu_leases.view(time.monotonic()),
        "event_subscribers": subscribers,
        "log_followers": log_followers(nodes),
        "events": events,
    }


def log_followers(nodes: dict[str, NodeHandle]) -> int:
    """Engine log streams followed now: listeners on this machine's logs, relays of agents'."""
    local = {id(n.supervisor): n.supervisor for n in nodes.values() if isinstance(n, LocalNode)}
    listening = sum(log.followers for s in local.values() for log in s.logs.values())
    return listening + sum(n.relays for n in nodes.values() if isinstance(n, RemoteNode))
