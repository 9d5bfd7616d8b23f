"""The scheduler's decisions as a pure function: (models, instances, waiters, now) → actions.

The scheduler's run loop (``scheduler.py``) owns the mutable state and the processes; after
every event it calls :func:`decide` and carries out what comes back. Nothing here awaits,
so a decision and the mutation it gates can never be split by another request.

Rules, in the order they apply:

* a request for a model that failed is refused while its restart backoff runs;
* a request that would need a swap and says ``x-modelyard-no-swap`` is refused;
* a request whose swap group is held by a pinned model is refused;
* a ready model takes requests; if a request for another member of its swap group waits,
  it keeps taking them for ``max_swap_delay`` (measured from when the waiter came or the
  model became ready, whichever is later), then drains: in-flight requests finish, bounded
  by ``drain_timeout``, and it stops;
* in each swap group, the waiting model with the oldest request starts next, once every
  other member has stopped: never two members up, even for an instant;
* waiting requests are granted by priority (their API key's), then in arrival order; a
  model's queue admits them in arrival order whatever their priority;
* an idle model stops after its ``ttl``; a pinned one never does;
* a model that crashed while serving restarts by itself, with exponential backoff.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from modelyard.errors import Code, status_of
from modelyard.placement import Inventory, Need, Resident, plan_eviction


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"


RESIDENT = frozenset({State.STARTING, State.READY, State.DRAINING, State.STOPPING})


@dataclass(frozen=True)
class ModelFacts:
    """What the scheduler needs to know of one configured model."""

    name: str
    swap_group: str | None = None
    pinned: bool = False
    ttl: float = 0.0
    node: str = "local"
    need: Need | None = None  # memory on each GPU of its node; None: not checked
    blocked: str | None = None  # a standing reason it may not start (MoE on a slow link)
    slots: int | None = None  # requests it serves at once; None: no limit
    queue: int = 100  # requests that may wait beyond its free slots
    spans: tuple[str, ...] = ()  # a model across nodes: the nodes that may hold its parts

    def room(self, in_flight: int) -> int:
        """Waiters it takes now: its free slots plus its queue."""
        free = (self.slots - in_flight) if self.slots is not None else 10**9
        return max(0, free) + self.queue


@dataclass(frozen=True)
class NodeView:
    """A node's availability: its mode's kind and whether its agent answers."""

    name: str
    mode: str = "open"
    kind: str = "open"  # open | gated | drained
    reachable: bool = True


@dataclass(frozen=True)
class Timing:
    drain_timeout: float = 30.0
    max_swap_delay: float = 5.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    max_restarts: int = 5

    def backoff(self, failures: int) -> float:
        """Wait before the next try after ``failures`` failures in a row: 1x, 2x, 4x … the base."""
        return float(
            min(self.restart_backoff * 2 ** max(failures - 1, 0), self.restart_backoff_max)
        )


@dataclass(frozen=True)
class InstanceView:
    """The scheduler's view of one model's instance at a moment."""

    model: str
    state: State = State.STOPPED
    in_flight: int = 0
    since: float = 0.0  # when it entered ``state``
    last_used: float = 0.0
    failures: int = 0  # failed starts or crashes in a row
    retry_at: float | None = None  # FAILED: earliest next try; None: gave up
    restart: bool = False  # FAILED after a crash while serving: comes back by itself
    stop_wanted: bool = False  # an admin asked for it to stop
    error: str | None = None
    keep_alive: float | None = None  # a client's idle time for it (Ollama); None: the ttl
    parts: tuple[Need, ...] = ()  # a model across nodes: what it holds on its nodes' GPUs


@dataclass(frozen=True)
class Waiter:
    """A request (or an admin ``start``) waiting for a model to be ready."""

    id: int
    model: str
    since: float
    no_swap: bool = False
    admin: bool = False  # an operator's start: allowed on gated and drained nodes
    force: bool = False  # a request that explicitly forces a gated node
    priority: int = 0  # higher is granted first (its API key's); ties in arrival order


@dataclass(frozen=True)
class Grant:
    waiter: int
    model: str


@dataclass(frozen=True)
class Refuse:
    waiter: int
    model: str
    code: Code  # what the request is told
    reason: str
    status: int = 0  # its HTTP status; 0: the code's own (errors.ERRORS)

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", status_of(self.code))


@dataclass(frozen=True)
class Start:
    model: str
    reason: str


@dataclass(frozen=True)
class Drain:
    model: str
    reason: str


@dataclass(frozen=True)
class Stop:
    model: str
    reason: str


Action = Grant | Refuse | Start | Drain | Stop


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    wake_at: float | None = None  # call decide again by then, even if nothing happens

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


def decide(
    models: Mapping[str, ModelFacts],
    instances: Mapping[str, InstanceView],
    waiters: Sequence[Waiter],
    timing: Timing,
    now: float,
    nodes: Mapping[str, NodeView] | None = None,
    inventory: Inventory | None = None,
) -> Plan:
    """Everything that should happen now, and when to look again."""
    plan = Plan()
    nodes = nodes or {}

    def view(name: str) -> InstanceView:
        return instances.get(name) or InstanceView(name)

    residents = residents_of(models, instances)

    live: list[Waiter] = []
    counted: dict[str, int] = {}
    for w in waiters:
        node = nodes.get(models[w.model].node, NodeView(models[w.model].node))
        refusal = _refusal(w, view(w.model), models[w.model], node, residents, inventory, now)
        refuse = None if refusal is None else Refuse(w.id, w.model, *refusal)
        if refuse is None and not w.admin:
            counted[w.model] = counted.get(w.model, 0) + 1
            v = view(w.model)
            if counted[w.model] > models[w.model].room(v.in_flight):
                refuse = _queue_full(w, models[w.model], v)
        if refuse is None:
            live.append(w)
        else:
            plan.actions.append(refuse)

    by_model: dict[str, list[Waiter]] = {}
    for w in sorted(live, key=_served_first):
        by_model.setdefault(w.model, []).append(w)

    challengers: dict[str, Waiter] = {}
    for w in _next_starts(models, by_model, instances, residents, inventory, now):
        eviction = plan_eviction(
            w.model, models[w.model].swap_group, residents, models[w.model].need, inventory
        )
        if not eviction.victims:
            why = "restart after crash" if w.id < 0 else "request waiting"
            plan.actions.append(Start(w.model, why))
        for victim in eviction.victims:
            challengers.setdefault(victim, w)

    for name, rule in models.items():
        v = view(name)
        mine = by_model.get(name, [])
        if v.state is State.READY:
            _ready(rule, v, mine, challengers.get(name), timing, now, plan)
        elif v.state is State.DRAINING:
            if v.in_flight == 0:
                plan.actions.append(Stop(name, "drained"))
            elif now >= v.since + timing.drain_timeout:
                plan.actions.append(
                    Stop(name, f"drain timeout: {v.in_flight} request(s) still running were cut")
                )
            else:
                plan.wake(v.since + timing.drain_timeout)
        elif v.state is State.FAILED and v.restart and not mine and v.retry_at is not None:
            if now < v.retry_at:
                plan.wake(v.retry_at)
    return plan


def residents_of(
    models: Mapping[str, ModelFacts], instances: Mapping[str, InstanceView]
) -> dict[str, Resident]:
    """What holds memory now: every instance starting, ready, draining or stopping."""
    return {
        name: Resident(
            name,
            models[name].pinned,
            models[name].swap_group,
            models[name].need,
            v.in_flight > 0,
            v.last_used,
            v.parts,
        )
        for name, v in instances.items()
        if v.state in RESIDENT and name in models
    }


def granted_at_once(rule: ModelFacts, v: InstanceView, node: NodeView, w: Waiter) -> bool:
    """Whether :func:`decide` would grant ``w`` at once if nothing else waited.

    The common case, a ready model with a free slot and an empty line, may then be served
    without a turn of the run loop. Never true where ``decide`` would not grant:
    ``tests/unit/test_lifecycle.py`` checks it against ``decide`` over every combination.
    """
    return (
        not w.admin  # an admin start takes no slot: the loop handles it
        and v.state is State.READY
        and not v.stop_wanted  # decide drains it (``_ready``)
        and _node_refusal(w, node) is None  # what ``_refusal`` asks of the node first
        and free_slots(rule, v.in_flight) > 0  # what ``_ready`` grants
    )


def free_slots(rule: ModelFacts, in_flight: int, wanted: int = 1) -> int:
    """Requests ``rule``'s instance takes now beside ``in_flight`` (up to ``wanted``)."""
    return wanted if rule.slots is None else max(0, rule.slots - in_flight)


def _node_refusal(w: Waiter, node: NodeView) -> tuple[Code, str] | None:
    """Why ``node`` takes no request like ``w`` now (its agent, its mode), or None."""
    unavailable = Code.MODEL_UNAVAILABLE
    if not node.reachable:
        return unavailable, f"node {node.name} is unreachable: its agent does not answer"
    if not w.admin:
        if node.kind == "drained":
            why = f"node {node.name} is in mode {node.mode!r} (drained): it takes nothing new"
            return unavailable, why
        if node.kind == "gated" and not w.force:
            return unavailable, (
                f"node {node.name} is in mode {node.mode!r} (gated): it takes only requests "
                "that force it"
            )
    return None


def quiet_release(v: InstanceView) -> bool:
    """Whether a slot given back on ``v`` (``v`` counted after it) leaves :func:`decide`
    nothing new to do when nobody waits.

    A ready instance still serving others has no idle timer to start and nothing to
    drain, so the run loop need not take a turn for it. ``tests/unit/test_lifecycle.py`` checks
    that ``decide`` plans the same before and after such a release.
    """
    return v.state is State.READY and not v.stop_wanted and v.in_flight > 0


def _refusal(
    w: Waiter,
    v: InstanceView,
    rule: ModelFacts,
    node: NodeView,
    residents: Mapping[str, Resident],
    inventory: Inventory | None,
    now: float,
) -> tuple[Code, str] | None:
    refused = _node_refusal(w, node)
    if refused is not None:
        return refused
    unavailable = Code.MODEL_UNAVAILABLE
    if v.state is State.FAILED and not v.stop_wanted:
        if v.retry_at is None:
            return unavailable, f"{w.model} failed: {v.error}; gave up after {v.failures} tries"
        if now < v.retry_at:
            return unavailable, f"{w.model} failed: {v.error}; next try in {v.retry_at - now:.0f}s"
    if v.state in (State.READY, State.STARTING):
        return None
    if rule.blocked:
        return Code.SWAP_REFUSED, rule.blocked
    eviction = plan_eviction(w.model, rule.swap_group, residents, rule.need, inventory)
    if not eviction.possible:
        return (Code.SWAP_REFUSED if eviction.blocked_by else unavailable), eviction.explain()
    if w.no_swap and eviction.victims:
        return Code.SWAP_REFUSED, (
            f"{w.model} is not loaded and x-modelyard-no-swap is set; "
            f"loading it would stop {', '.join(eviction.victims)}"
        )
    return None


def _served_first(w: Waiter) -> tuple[int, float, int]:
    """Grant order: higher priority first, then the oldest (ids break ties in a burst)."""
    return (-w.priority, w.since, w.id)


def _queue_full(w: Waiter, rule: ModelFacts, v: InstanceView) -> Refuse:
    if v.state is State.READY:
        busy = (
            f"{rule.name} is busy: {v.in_flight} running on {rule.slots} slot(s) and its queue "
            f"of {rule.queue} is full"
        )
        return Refuse(w.id, w.model, Code.MODEL_UNAVAILABLE, busy, status=429)
    why = f"{rule.name} is {v.state.value}, and {rule.queue} request(s) already wait for it"
    return Refuse(w.id, w.model, Code.MODEL_UNAVAILABLE, why)


def _resources(rule: ModelFacts, inventory: Inventory | None) -> set[tuple[str, ...]]:
    """What a start occupies: one start at a time per swap group and per GPU. A model
    across nodes splits itself by what is free on every GPU of its nodes when it starts,
    so it occupies them all (two starts must not count the same free memory)."""
    keys: set[tuple[str, ...]] = {("model", rule.name)}
    if rule.swap_group:
        keys.add(("group", rule.swap_group))
    if rule.need is not None:
        keys |= {("gpu", rule.need.node, str(i)) for i in rule.need.per_gpu}
    for node in (rule.node, *rule.spans) if rule.spans else ():
        keys |= {("gpu", node, str(g.index)) for g in (inventory.of(node) if inventory else ())}
    return keys


def _next_starts(
    models: Mapping[str, ModelFacts],
    by_model: Mapping[str, list[Waiter]],
    instances: Mapping[str, InstanceView],
    residents: Mapping[str, Resident],
    inventory: Inventory | None,
    now: float,
) -> list[Waiter]:
    """The models to load next, oldest request first, at most one per group and per GPU."""

    def get(name: str) -> InstanceView:
        return instances.get(name) or InstanceView(name)

    busy: set[tuple[str, ...]] = set()
    for name, rule in models.items():
        if get(name).state is State.STARTING:
            busy |= _resources(rule, inventory)
    candidates = [
        waiting[0]
        for name, waiting in by_model.items()
        if waiting and get(name).state not in (State.READY, State.STARTING)
    ]
    for name in models:
        v = get(name)
        if v.state is State.FAILED and v.restart and v.retry_at is not None and now >= v.retry_at:
            if name not in by_model:
                candidates.append(Waiter(-1, name, v.retry_at))
    chosen: list[Waiter] = []
    for w in sorted(candidates, key=_served_first):
        rule = models[w.model]
        keys = _resources(rule, inventory)
        if keys & busy:
            continue  # wait: one start at a time per group and per GPU
        busy |= keys
        if get(w.model).state not in (State.STOPPED, State.FAILED):
            continue  # draining or stopping itself: it starts again once stopped
        if w.id < 0:  # a crash restart never evicts what took its place
            eviction = plan_eviction(w.model, rule.swap_group, residents, rule.need, inventory)
            if eviction.victims or not eviction.possible:
                continue
        chosen.append(w)
    return chosen


def _ready(
    rule: ModelFacts,
    v: InstanceView,
    mine: list[Waiter],
    challenger: Waiter | None,
    timing: Timing,
    now: float,
    plan: Plan,
) -> None:
    if v.stop_wanted:
        plan.actions.append(Drain(rule.name, "stop requested"))
        return
    deadline = None
    if challenger is not None and not rule.pinned:
        deadline = max(challenger.since, v.since) + timing.max_swap_delay
    if deadline is None or now < deadline:
        free = free_slots(rule, v.in_flight, len(mine))
        plan.actions.extend(Grant(w.id, rule.name) for w in mine[:free])
    if deadline is not None and challenger is not None:
        idle = v.in_flight == 0 and not mine
        if now >= deadline or idle:
            plan.actions.append(Drain(rule.name, f"swap to {challenger.model}"))
        else:
            plan.wake(deadline)
        return
    # A client's keep_alive stands for the model's ttl: 0 stops it once idle, inf never.
    ttl, why = rule.ttl, "ttl"
    if v.keep_alive is not None:
        ttl, why = v.keep_alive, "keep_alive"
    counts = (ttl > 0 or v.keep_alive == 0) and ttl != math.inf
    if counts and not rule.pinned and v.in_flight == 0 and not mine:
        expires = v.last_used + ttl
        if now >= expires:
            plan.actions.append(Stop(rule.name, f"idle for {ttl:g}s ({why})"))
        else:
            plan.wake(expires)


def queue_wait(
    ahead: int, took: Sequence[float], running: Sequence[float], slots: int, load: float | None
) -> float:
    """Seconds until a request refused now would be served at once if it came back.

    The ``ahead`` requests waiting and itself, served ``slots`` at a time, each taking as
    long as the last ones did (``took``, seconds on a slot); before any finished, as long
    as the oldest ``running`` one has run so far. ``load``: the typical load time of a model
    not ready yet (None when it is).
    """
    each = sum(took) / len(took) if took else max(running, default=0.0)
    drain = (ahead + 1) * each / slots
    return max(drain, 1.0) if load is None else load + drain
