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
* an idle model stops after its ``ttl``; a pinned one never does;
* a model that crashed while serving restarts by itself, with exponential backoff.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from modelyard.placement import Resident, plan_eviction


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"


RESIDENT = frozenset({State.STARTING, State.READY, State.DRAINING, State.STOPPING})


@dataclass(frozen=True)
class ModelRule:
    """What the scheduler needs to know of one configured model."""

    name: str
    swap_group: str | None = None
    pinned: bool = False
    ttl: float = 0.0


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


@dataclass(frozen=True)
class Waiter:
    """A request (or an admin ``start``) waiting for a model to be ready."""

    id: int
    model: str
    since: float
    no_swap: bool = False


@dataclass(frozen=True)
class Grant:
    waiter: int
    model: str


@dataclass(frozen=True)
class Refuse:
    waiter: int
    model: str
    status: int  # HTTP status the request gets
    reason: str


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
    models: Mapping[str, ModelRule],
    instances: Mapping[str, InstanceView],
    waiters: Sequence[Waiter],
    timing: Timing,
    now: float,
) -> Plan:
    """Everything that should happen now, and when to look again."""
    plan = Plan()

    def view(name: str) -> InstanceView:
        return _view(instances, name)

    residents = {
        name: Resident(name, models[name].pinned, models[name].swap_group)
        for name, v in instances.items()
        if v.state in RESIDENT and name in models
    }

    live: list[Waiter] = []
    for w in waiters:
        refusal = _refusal(w, view(w.model), models, residents, now)
        if refusal is None:
            live.append(w)
        else:
            plan.actions.append(Refuse(w.id, w.model, *refusal))

    by_model: dict[str, list[Waiter]] = {}
    for w in live:
        by_model.setdefault(w.model, []).append(w)

    challengers = _challengers(models, by_model, instances)

    for name, rule in models.items():
        v = view(name)
        mine = by_model.get(name, [])
        challenger = challengers.get(rule.swap_group) if rule.swap_group else None
        if challenger is not None and challenger.model == name:
            challenger = None
        if v.state is State.READY:
            _ready(rule, v, mine, challenger, timing, now, plan)
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

    for group_or_name, w in _next_starts(models, by_model, instances, now).items():
        rule = models[w.model]
        eviction = plan_eviction(w.model, rule.swap_group, residents)
        if eviction.possible and not eviction.victims:
            why = "restart after crash" if w.id < 0 else f"request waiting ({group_or_name})"
            plan.actions.append(Start(w.model, why))
    return plan


def _refusal(
    w: Waiter,
    v: InstanceView,
    models: Mapping[str, ModelRule],
    residents: Mapping[str, Resident],
    now: float,
) -> tuple[int, str] | None:
    if v.state is State.FAILED and not v.stop_wanted:
        if v.retry_at is None:
            return 503, f"{w.model} failed: {v.error}; gave up after {v.failures} tries"
        if now < v.retry_at:
            return 503, f"{w.model} failed: {v.error}; next try in {v.retry_at - now:.0f}s"
    if v.state in (State.READY, State.STARTING):
        return None
    rule = models[w.model]
    eviction = plan_eviction(w.model, rule.swap_group, residents)
    if not eviction.possible:
        return 409, eviction.explain()
    if w.no_swap and eviction.victims:
        return 409, (
            f"{w.model} is not loaded and x-modelyard-no-swap is set; "
            f"loading it would stop {', '.join(eviction.victims)}"
        )
    return None


def _view(instances: Mapping[str, InstanceView], name: str) -> InstanceView:
    return instances.get(name) or InstanceView(name)


def _challengers(
    models: Mapping[str, ModelRule],
    by_model: Mapping[str, list[Waiter]],
    instances: Mapping[str, InstanceView],
) -> dict[str, Waiter]:
    """Per swap group, the oldest waiter for a member that is not up: the next to load."""
    out: dict[str, Waiter] = {}
    for name, waiting in by_model.items():
        group = models[name].swap_group
        if group is None or not waiting:
            continue
        state = _view(instances, name).state
        if state in (State.READY, State.STARTING):
            continue
        oldest = waiting[0]
        if group not in out or oldest.since < out[group].since:
            out[group] = oldest
    return out


def _ready(
    rule: ModelRule,
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
        plan.actions.extend(Grant(w.id, rule.name) for w in mine)
    if deadline is not None and challenger is not None:
        idle = v.in_flight == 0 and not mine
        if now >= deadline or idle:
            plan.actions.append(Drain(rule.name, f"swap to {challenger.model}"))
        else:
            plan.wake(deadline)
        return
    if rule.ttl > 0 and not rule.pinned and v.in_flight == 0 and not mine:
        expires = v.last_used + rule.ttl
        if now >= expires:
            plan.actions.append(Stop(rule.name, f"idle for {rule.ttl:g}s (ttl)"))
        else:
            plan.wake(expires)


def _next_starts(
    models: Mapping[str, ModelRule],
    by_model: Mapping[str, list[Waiter]],
    instances: Mapping[str, InstanceView],
    now: float,
) -> dict[str, Waiter]:
    """The one model per swap group (or each ungrouped model) that should load next."""

    def get(name: str) -> InstanceView:
        return _view(instances, name)

    out: dict[str, Waiter] = {}
    busy_groups = {
        models[n].swap_group
        for n in models
        if get(n).state is State.STARTING and models[n].swap_group
    }
    candidates: Iterable[tuple[str, Waiter]] = (
        (name, waiting[0]) for name, waiting in by_model.items() if waiting
    )
    restarts = []
    for name in models:
        v = get(name)
        if v.state is State.FAILED and v.restart and v.retry_at is not None and now >= v.retry_at:
            restarts.append((name, Waiter(-1, name, v.retry_at)))
    for name, w in sorted([*candidates, *restarts], key=lambda item: item[1].since):
        v = get(name)
        if v.state not in (State.STOPPED, State.FAILED):
            continue
        key = models[name].swap_group or f"model {name}"
        if key in busy_groups or key in out:
            continue
        if (
            w.id < 0
            and models[name].swap_group is not None
            and any(
                get(o).state in RESIDENT
                for o in models
                if o != name and models[o].swap_group == models[name].swap_group
            )
        ):
            continue  # a crash restart never evicts the member that took over
        out[key] = w
    return out
