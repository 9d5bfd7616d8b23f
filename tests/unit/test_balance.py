"""How a tier picks among its members, table by table (modelyard.balance, and routing's use
of it: the order of the candidates and the trail)."""

from __future__ import annotations

import pytest

from modelyard.balance import Load, pick
from modelyard.cluster_watch import NO_CLAIM, Claim
from modelyard.config import Config, ConfigError, parse_config
from modelyard.openai_body import features
from modelyard.routing import Cluster, route

A, B, C = "a", "b", "c"


def parse(text: str) -> Config:
    return parse_config(text, "/etc/modelyard/test.yaml", {})


@pytest.mark.parametrize(
    ("loads", "order"),
    [
        ({}, [A, B, C]),  # nothing known: the tier's order
        ({A: Load(True, 2, 4, 0), B: Load(True, 0, 4, 0), C: Load(True, 1, 4, 0)}, [B, C, A]),
        # requests per slot: 1 of 1 is busier than 2 of 4; the queue counts as load
        ({A: Load(True, 1, 1, 0), B: Load(True, 2, 4, 0), C: Load(True, 0, 1, 1)}, [B, A, C]),
        # loaded with a slot free before cold, even a busy one: a cold member must load first
        ({A: Load(False, 0, 4, 0), B: Load(True, 3, 4, 0), C: Load(True, 0, 4, 0)}, [C, B, A]),
        # but a cold member before a full one: loading beats waiting behind full slots
        ({A: Load(True, 2, 2, 0), B: Load(False, 0, 2, 0), C: Load(True, 1, 1, 3)}, [B, A, C]),
        # equal slots: the less used GPU first; ties keep the tier's order
        ({A: Load(True, 1, 2, 0, 90), B: Load(True, 1, 2, 0, 10), C: Load(True, 1, 2, 0)},
         [C, B, A]),
        ({A: Load(True, 0, 2, 0), B: Load(True, 0, 2, 0), C: Load(True, 0, 2, 0)}, [A, B, C]),
    ],
)  # fmt: skip
def test_least_busy(loads: dict[str, Load], order: list[str]) -> None:
    got, why = pick("least_busy", [A, B, C], loads, 0)
    assert got == order
    assert why is not None and why.startswith(f"least_busy: {order[0]} (")
    for member in order:  # every member's load is in the trail, compared
        assert f"{member} " in why


@pytest.mark.parametrize(
    ("turn", "order"),
    [(0, [A, B, C]), (1, [B, C, A]), (2, [C, A, B]), (3, [A, B, C]), (7, [B, C, A])],
)
def test_round_robin(turn: int, order: list[str]) -> None:
    assert pick("round_robin", [A, B, C], {}, turn) == (
        order,
        f"round_robin: turn {turn} → {order[0]}",
    )


@pytest.mark.parametrize("how", ["first", "least_busy", "round_robin"])
def test_first_and_a_single_member_keep_their_order_and_say_nothing(how: str) -> None:
    assert pick(how, [B], {B: Load(True, 9, 1, 9)}, 5) == ([B], None)
    assert pick("first", [A, B], {A: Load(True, 9, 1, 9)}, 5) == ([A, B], None)


CONFIG = """
models:
  a: {engine: command, command: [x, "{port}"], slots: 2}
  b: {engine: command, command: [x, "{port}"], slots: 2}
  c: {engine: command, command: [x, "{port}"], slots: 2}
tiers:
  plain: [a, b]
  coder: {members: [a, b, c], pick: least_busy}
  turns: {members: [a, b], pick: round_robin}
  nested: [coder]
"""


def test_a_tier_block_and_the_list_shorthand() -> None:
    config = parse(CONFIG)
    assert config.tiers == {
        "plain": [A, B],
        "coder": [A, B, C],
        "turns": [A, B],
        "nested": ["coder"],
    }
    assert [config.pick(t) for t in config.tiers] == ["first", "least_busy", "round_robin", "first"]
    with pytest.raises(ConfigError, match="members"):
        parse(CONFIG.replace("pick: round_robin", "pick: round_robin, weight: 2"))
    with pytest.raises(ConfigError, match="least_busy"):
        parse(CONFIG.replace("pick: round_robin", "pick: random"))
    with pytest.raises(ConfigError, match="'ghost' is not a tier"):
        parse(CONFIG + "tier_picks: {ghost: least_busy}\n")


def test_routing_orders_a_tier_s_candidates_and_says_why() -> None:
    config = parse(CONFIG)
    loads = {A: Load(True, 2, 2, 1), B: Load(True, 1, 2, 0), C: Load(False, 0, 2, 0)}  # a full
    where = Cluster(loads=loads, turns={"turns": 3})
    coder = route(config, features({"model": "coder"}, {}), where)
    assert coder.candidates == (B, C, A)
    step = coder.trail[-1]
    assert (step.kind, step.name, step.ok) == ("pick", "coder", True)
    assert step.why == (
        "least_busy: b (b 1/2 slots, 0 queued; c 0/2 slots, 0 queued, not loaded; "
        "a 2/2 slots, 1 queued)"
    )
    # A member turned down (failed) is not picked, whatever its load.
    failing = Cluster(loads=loads, failed={B: "failed: gone"})
    assert route(config, features({"model": "coder"}, {}), failing).candidates == (C, A)
    turns = route(config, features({"model": "turns"}, {}), where)
    assert turns.candidates == (B, A) and turns.trail[-1].why == "round_robin: turn 3 → b"
    # first, and a tier reached through another (its own pick is first): no pick step
    for tier in ("plain", "nested"):
        decided = route(config, features({"model": tier}, {}), where)
        assert all(s.kind != "pick" for s in decided.trail)
    assert route(config, features({"model": "plain"}, {}), where).candidates == (A, B)


def test_a_claim_counts_until_released_once() -> None:
    # What a stream decided for a member counts there until the scheduler counts it: a
    # second decision in the same loop turn must see it.
    pending: dict[str, int] = {}
    first, second = Claim(pending, A), Claim(pending, A)
    pending[A] = 2
    first.release()
    first.release()  # again (the task's done callback after acquire): nothing more
    assert pending == {A: 1}
    second.release()
    assert pending == {} and NO_CLAIM.release() is None
