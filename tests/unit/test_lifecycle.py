"""The scheduler's pure decisions, table by table."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from modelyard.lifecycle import (
    Drain,
    Grant,
    InstanceView,
    ModelFacts,
    Refuse,
    Start,
    State,
    Stop,
    Timing,
    Waiter,
    decide,
)

T = Timing(drain_timeout=30, max_swap_delay=5, restart_backoff=1, restart_backoff_max=60)
MODELS = {
    "a": ModelFacts("a", swap_group="g", ttl=60),
    "b": ModelFacts("b", swap_group="g", ttl=60),
    "c": ModelFacts("c", swap_group="g"),
    "p": ModelFacts("p", pinned=True, swap_group="pinned-group"),
    "q": ModelFacts("q", swap_group="pinned-group"),
    "free": ModelFacts("free"),
}


def inst(model: str, state: State, **kw: object) -> InstanceView:
    return InstanceView(model, state, **kw)  # type: ignore[arg-type]


def kinds(actions: list[object]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for a in actions:
        if isinstance(a, Grant):
            out.append(("grant", str(a.waiter), a.model))
        elif isinstance(a, Refuse):
            out.append(("refuse", str(a.waiter), str(a.status)))
        else:
            out.append((type(a).__name__.lower(), a.model))  # type: ignore[attr-defined]
    return out


CASES = [
    pytest.param(
        {},
        [Waiter(1, "a", 0)],
        0,
        [("start", "a")],
        id="cold model starts",
    ),
    pytest.param(
        {"a": inst("a", State.STARTING, since=0)},
        [Waiter(1, "a", 0), Waiter(2, "a", 0.1)],
        1,
        [],
        id="waiters on a starting model wait: one start for many",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0)},
        [Waiter(1, "a", 1), Waiter(2, "a", 1)],
        1,
        [("grant", "1", "a"), ("grant", "2", "a")],
        id="ready model grants everyone",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0, in_flight=2)},
        [Waiter(1, "b", 10), Waiter(2, "a", 11)],
        11,
        [("grant", "2", "a")],
        id="busy loaded member keeps serving within max_swap_delay",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0, in_flight=2)},
        [Waiter(1, "b", 10), Waiter(2, "a", 15.5)],
        15.5,
        [("drain", "a")],
        id="after max_swap_delay it stops taking requests and drains",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0, in_flight=0)},
        [Waiter(1, "b", 10)],
        10,
        [("drain", "a")],
        id="idle loaded member yields at once",
    ),
    pytest.param(
        {"a": inst("a", State.DRAINING, since=10, in_flight=1)},
        [Waiter(1, "b", 10)],
        12,
        [],
        id="draining waits for in-flight requests",
    ),
    pytest.param(
        {"a": inst("a", State.DRAINING, since=10, in_flight=0)},
        [Waiter(1, "b", 10)],
        12,
        [("stop", "a")],
        id="drained member stops",
    ),
    pytest.param(
        {"a": inst("a", State.DRAINING, since=10, in_flight=3)},
        [Waiter(1, "b", 10)],
        40,
        [("stop", "a")],
        id="drain timeout cuts the stragglers",
    ),
    pytest.param(
        {"a": inst("a", State.STOPPING, since=10)},
        [Waiter(1, "b", 10)],
        12,
        [],
        id="never two members up: no start while one stops",
    ),
    pytest.param(
        {"a": inst("a", State.STOPPED, since=12)},
        [Waiter(1, "b", 10)],
        12,
        [("start", "b")],
        id="start once the other member is down",
    ),
    pytest.param(
        {},
        [Waiter(1, "b", 10), Waiter(2, "a", 9), Waiter(3, "c", 11)],
        12,
        [("start", "a")],
        id="one start per group, the oldest waiter first",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0)},
        [Waiter(1, "b", 10, no_swap=True)],
        10,
        [("refuse", "1", "409")],
        id="no-swap header fails fast when a swap is needed",
    ),
    pytest.param(
        {},
        [Waiter(1, "b", 10, no_swap=True)],
        10,
        [("start", "b")],
        id="no-swap still cold-starts when nothing is in the way",
    ),
    pytest.param(
        {"p": inst("p", State.READY, since=0)},
        [Waiter(1, "q", 10)],
        10,
        [("refuse", "1", "409")],
        id="pinned member is never evicted",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0, last_used=100)},
        [],
        160,
        [("stop", "a")],
        id="ttl expiry stops an idle model",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0, last_used=100, in_flight=1)},
        [],
        500,
        [],
        id="ttl never stops a model with requests in flight",
    ),
    pytest.param(
        {"c": inst("c", State.READY, since=0, last_used=0)},
        [],
        10_000,
        [],
        id="ttl 0 means never",
    ),
    pytest.param(
        {"a": inst("a", State.FAILED, since=0, failures=1, retry_at=5, error="boom")},
        [Waiter(1, "a", 1)],
        1,
        [("refuse", "1", "503")],
        id="failed model refuses during backoff",
    ),
    pytest.param(
        {"a": inst("a", State.FAILED, since=0, failures=1, retry_at=5, error="boom")},
        [Waiter(1, "a", 6)],
        6,
        [("start", "a")],
        id="failed model retries after backoff",
    ),
    pytest.param(
        {"a": inst("a", State.FAILED, failures=5, retry_at=None, error="boom")},
        [Waiter(1, "a", 6)],
        6,
        [("refuse", "1", "503")],
        id="gave up after max restarts",
    ),
    pytest.param(
        {"a": inst("a", State.FAILED, failures=1, retry_at=5, restart=True, error="crash")},
        [],
        6,
        [("start", "a")],
        id="crashed model restarts by itself after backoff",
    ),
    pytest.param(
        {
            "a": inst("a", State.FAILED, failures=1, retry_at=5, restart=True),
            "b": inst("b", State.READY, since=4),
        },
        [],
        6,
        [],
        id="a crash restart never evicts the member that took over",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0, stop_wanted=True)},
        [Waiter(1, "a", 3)],
        3,
        [("drain", "a")],
        id="admin stop drains and takes nothing new",
    ),
    pytest.param(
        {"a": inst("a", State.READY, since=0), "free": inst("free", State.READY, since=0)},
        [Waiter(1, "free", 3), Waiter(2, "a", 3)],
        3,
        [("grant", "2", "a"), ("grant", "1", "free")],
        id="models without a group run side by side",
    ),
]


@pytest.mark.parametrize(("instances", "waiters", "now", "expected"), CASES)
def test_decide(
    instances: dict[str, InstanceView],
    waiters: list[Waiter],
    now: float,
    expected: list[tuple[str, ...]],
) -> None:
    plan = decide(MODELS, instances, waiters, T, now)
    assert kinds(plan.actions) == expected


def test_swap_target_waits_for_ready_member_then_starts() -> None:
    """A→B with A busy: A serves queued requests, drains, stops; only then B starts."""
    instances = {"a": inst("a", State.READY, since=0, in_flight=1)}
    waiters = [Waiter(1, "b", 0)]
    plan = decide(MODELS, instances, waiters, T, 1)
    assert plan.actions == []
    assert plan.wake_at == 5  # max_swap_delay after b's request came
    plan = decide(MODELS, instances, waiters, T, 5)
    assert plan.actions == [Drain("a", "swap to b")]


def test_ready_member_is_given_max_swap_delay_after_it_loads() -> None:
    """Requests queued while a model loaded are all served, even if a challenger waited long."""
    instances = {"b": inst("b", State.READY, since=100)}
    waiters = [Waiter(1, "a", 0), Waiter(2, "b", 50), Waiter(3, "b", 60)]
    plan = decide(MODELS, instances, waiters, T, 100)
    assert kinds(plan.actions) == [("grant", "2", "b"), ("grant", "3", "b")]


def test_ttl_wakes_the_loop_when_due() -> None:
    instances = {"a": inst("a", State.READY, since=0, last_used=100)}
    plan = decide(MODELS, instances, [], T, 110)
    assert plan.actions == [] and plan.wake_at == 160


def test_refusals_say_why() -> None:
    instances = {"a": inst("a", State.READY, since=0), "p": inst("p", State.READY, since=0)}
    plan = decide(MODELS, instances, [Waiter(1, "b", 1, no_swap=True), Waiter(2, "q", 1)], T, 1)
    reasons = [a.reason for a in plan.actions if isinstance(a, Refuse)]
    assert "x-modelyard-no-swap" in reasons[0] and "would stop a" in reasons[0]
    assert "pinned p" in reasons[1]


@pytest.mark.parametrize(
    ("failures", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (20, 60.0)]
)
def test_backoff(failures: int, expected: float) -> None:
    assert T.backoff(failures) == expected


def test_stop_reason_names_the_swap() -> None:
    plan = decide(MODELS, {"a": inst("a", State.READY, since=0)}, [Waiter(1, "c", 3)], T, 3)
    assert plan.actions == [Drain("a", "swap to c")]
    plan = decide(MODELS, {"a": inst("a", State.DRAINING, since=3)}, [Waiter(1, "c", 3)], T, 4)
    assert plan.actions == [Stop("a", "drained")]
    plan = decide(MODELS, {"a": inst("a", State.STOPPED, since=4)}, [Waiter(1, "c", 3)], T, 4)
    assert plan.actions == [Start("c", "request waiting")]


SLOTTED = {"s": ModelFacts("s", slots=2, queue=3)}


@pytest.mark.parametrize(
    ("state", "in_flight", "waiting", "expected"),
    [
        pytest.param(
            State.READY,
            0,
            3,
            [("grant", "1", "s"), ("grant", "2", "s")],
            id="grants up to the free slots, FIFO",
        ),
        pytest.param(State.READY, 2, 3, [], id="all slots busy: everyone waits"),
        pytest.param(
            State.READY,
            2,
            5,
            [("refuse", "4", "429"), ("refuse", "5", "429")],
            id="beyond the queue: 429",
        ),
        pytest.param(
            State.READY,
            1,
            6,
            [("refuse", "5", "429"), ("refuse", "6", "429"), ("grant", "1", "s")],
            id="one free slot plus the queue",
        ),
        pytest.param(
            State.STARTING,
            0,
            7,
            [("refuse", "6", "503"), ("refuse", "7", "503")],
            id="waiting for a load is a queue too: 503",
        ),
    ],
)
def test_slots_and_queue(
    state: State, in_flight: int, waiting: int, expected: list[tuple[str, ...]]
) -> None:
    instances = {"s": inst("s", state, since=0, in_flight=in_flight)}
    waiters = [Waiter(i, "s", float(i)) for i in range(1, waiting + 1)]
    assert kinds(decide(SLOTTED, instances, waiters, T, 10).actions) == expected


def test_admin_start_is_not_counted_in_the_queue() -> None:
    instances = {"s": inst("s", State.STARTING, since=0)}
    waiters = [Waiter(i, "s", float(i)) for i in range(1, 6)] + [Waiter(9, "s", 9, admin=True)]
    assert decide(SLOTTED, instances, waiters, T, 10).actions == []


def _w(id: int, model: str, since: float, priority: int = 0) -> Waiter:
    return Waiter(id, model, since, priority=priority)


@pytest.mark.parametrize(
    ("instances", "waiters", "expected"),
    [
        pytest.param(
            {"s": inst("s", State.READY, since=0, in_flight=1)},
            [_w(1, "s", 1), _w(2, "s", 2), _w(3, "s", 3, priority=10)],
            [("grant", "3", "s")],
            id="one free slot: the interactive request before older batch ones",
        ),
        pytest.param(
            {"s": inst("s", State.READY, since=0)},
            [_w(1, "s", 1), _w(2, "s", 2, priority=5), _w(3, "s", 3, priority=10)],
            [("grant", "3", "s"), ("grant", "2", "s")],
            id="two free slots: highest priorities, highest first",
        ),
        pytest.param(
            {"s": inst("s", State.READY, since=0)},
            [_w(4, "s", 4, priority=1), _w(2, "s", 2, priority=1), _w(3, "s", 3, priority=1)],
            [("grant", "2", "s"), ("grant", "3", "s")],
            id="equal priorities: arrival order",
        ),
        pytest.param(
            {"s": inst("s", State.READY, since=0, in_flight=2)},
            [_w(i, "s", float(i)) for i in range(1, 4)] + [_w(9, "s", 9, priority=10)],
            [("refuse", "9", "429")],
            id="a full queue admits in arrival order: priority does not push others out",
        ),
        pytest.param(
            {"a": inst("a", State.STOPPED), "b": inst("b", State.STOPPED)},
            [_w(1, "a", 1), _w(2, "b", 2, priority=10)],
            [("start", "b")],
            id="a swap group loads the model of the highest-priority request first",
        ),
    ],
)
def test_priority(
    instances: dict[str, InstanceView], waiters: list[Waiter], expected: list[tuple[str, ...]]
) -> None:
    models = {**SLOTTED, "a": MODELS["a"], "b": MODELS["b"]}
    assert kinds(decide(models, instances, waiters, T, 10).actions) == expected


def test_granted_at_once_never_grants_what_decide_would_not() -> None:
    """The run loop's shortcut against decide itself, over every combination."""
    import itertools

    from modelyard.lifecycle import NodeView, granted_at_once

    checked = 0
    for state, in_flight, slots, stop, kind, reachable, force, admin in itertools.product(
        list(State),
        (0, 1, 2),
        (None, 1, 2),
        (False, True),
        ("open", "gated", "drained"),
        (True, False),
        (False, True),
        (False, True),
    ):
        rule = ModelFacts("m", swap_group="g", ttl=5, slots=slots, queue=3)
        view = inst("m", state, since=0, in_flight=in_flight, stop_wanted=stop, retry_at=100)
        node = NodeView("local", "x", kind, reachable)
        w = Waiter(1, "m", 10, admin=admin, force=force)
        fast = granted_at_once(rule, view, node, w)
        plan = decide({"m": rule, "o": ModelFacts("o", swap_group="g")}, {"m": view}, [w], T, 10,
                      {"local": node})  # fmt: skip
        if fast:
            assert plan.actions == [Grant(1, "m")], (state, in_flight, slots, stop, kind)
            checked += 1
    assert checked > 10


def test_a_quiet_release_changes_nothing_decide_would_do() -> None:
    """The run loop skips its turn after a quiet release: decide plans the same before and
    after it, whatever the state, the slots, the ttl, pinning and the clock."""
    import dataclasses
    import itertools

    from modelyard.lifecycle import quiet_release

    checked = 0
    for state, after, stop, ttl, pinned, group, used, now in itertools.product(
        list(State),
        (0, 1, 2),
        (False, True),
        (0.0, 5.0),
        (False, True),
        (None, "g"),
        (0.0, 9.0),
        (10.0, 20.0),
    ):
        rule = ModelFacts("m", swap_group=group, pinned=pinned, ttl=ttl, slots=4)
        models = {"m": rule, "o": ModelFacts("o", swap_group=group)}
        before = inst("m", state, since=0, in_flight=after + 1, stop_wanted=stop, last_used=used)
        released = dataclasses.replace(before, in_flight=after, last_used=now)
        if not quiet_release(released):
            continue
        old = decide(models, {"m": before}, [], T, now)
        new = decide(models, {"m": released}, [], T, now)
        assert (old.actions, old.wake_at) == (new.actions, new.wake_at), (state, after, ttl)
        checked += 1
    assert checked > 10
    # and it is not quiet where the loop has something to do: the last slot of a ttl model
    last = inst("m", State.READY, since=0, in_flight=0, last_used=10)
    assert not quiet_release(last)
    assert decide({"m": ModelFacts("m", ttl=5)}, {"m": last}, [], T, 10).wake_at == 15


@pytest.mark.parametrize(
    ("keep_alive", "at", "stops", "wake"),
    [
        (None, 170, True, None),  # the model's ttl (60 s)
        (0.0, 100, True, None),  # Ollama's keep_alive 0: stopped once idle
        (5.0, 104, False, 105),  # a duration of its own
        (5.0, 105, True, None),
        (math.inf, 10_000, False, None),  # -1: kept
        (300.0, 170, False, 400),  # longer than the ttl: it wins
    ],
)
def test_a_client_s_keep_alive_stands_for_the_ttl(
    keep_alive: float | None, at: float, stops: bool, wake: float | None
) -> None:
    idle = replace(inst("a", State.READY, since=0, last_used=100), keep_alive=keep_alive)
    plan = decide(MODELS, {"a": idle}, [], T, at)
    stopped = [a for a in plan.actions if isinstance(a, Stop)]
    assert bool(stopped) is stops, plan.actions
    if stopped:
        assert ("keep_alive" if keep_alive is not None else "ttl") in stopped[0].reason
    assert plan.wake_at == wake
    busy = replace(idle, in_flight=1)
    assert decide(MODELS, {"a": busy}, [], T, at).actions == []  # never mid-request
