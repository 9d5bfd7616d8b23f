"""Placement, memory estimates and node-aware decisions, table by table (pure, no I/O).

Figures come from real set-ups: two RTX 3060 12 GB with GPU 0 on PCIe 3.0 x4 (five tiers,
the 122B MoE on GPU 1 only); one 96 GB card split between two vLLM servers at 0.45 and 0.40;
one 32 GB card that holds one heavy model at a time.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from modelyard.config import Config, ConfigError, parse_config
from modelyard.errors import Code
from modelyard.estimate import GgufFacts, estimate_gguf, kv_cache_bytes, need_for
from modelyard.lifecycle import (
    Action,
    Drain,
    Grant,
    InstanceView,
    ModelFacts,
    NodeView,
    Refuse,
    Start,
    State,
    Timing,
    Waiter,
    decide,
)
from modelyard.placement import (
    Eviction,
    Gpu,
    Inventory,
    Need,
    Offer,
    Resident,
    choose_parts,
    free_on,
    plan_eviction,
    slow_link,
    split,
)

GiB = 1024**3
MiB = 1024**2


def inventory(*gpus: Gpu, reserve: Mapping[str, int] | None = None) -> Inventory:
    return Inventory({(g.node, g.index): g for g in gpus}, dict(reserve or {}))


def res(
    model: str,
    per_gpu: Mapping[int, int] | None,
    *,
    node: str = "a",
    pinned: bool = False,
    group: str | None = None,
    busy: bool = False,
    last_used: float = 0.0,
) -> Resident:
    need = None if per_gpu is None else Need(node, dict(per_gpu), how="declared")
    return Resident(model, pinned, group, need, busy, last_used)


def residents(*rs: Resident) -> dict[str, Resident]:
    return {r.model: r for r in rs}


# S1: Machine A, two RTX 3060 12 GB; GPU 0 sits in a PCIe 3.0 x4 slot.
S1_GPU0 = Gpu("a", 0, "RTX 3060", 12 * GiB, pcie_gen=3, pcie_width=4)
S1_GPU1 = Gpu("a", 1, "RTX 3060", 12 * GiB, pcie_gen=4, pcie_width=16)
S1 = inventory(S1_GPU0, S1_GPU1)
# S4: one 96 GB card, two vLLM servers by share of its memory.
S4_GPU = Gpu("box", 0, "RTX PRO 6000", 96 * GiB)
S4 = inventory(S4_GPU)
S4_CODER = int(0.45 * 96 * GiB)
S4_GENERAL = int(0.40 * 96 * GiB)
S4_THIRD = int(0.30 * 96 * GiB)
# S5: one 32 GB card; GPT-OSS-120B or Qwen3-Coder-30B, never both.
S5_GPU = Gpu("ws", 0, "RTX 5090", 32 * GiB)
S5 = inventory(S5_GPU)


# --- split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "gpus", "tensor_split", "expected"),
    [
        pytest.param(20 * GiB, [0, 1], None, {0: 10 * GiB, 1: 10 * GiB}, id="equal parts"),
        pytest.param(
            12 * GiB, [0, 1, 2], None, {0: 4 * GiB, 1: 4 * GiB, 2: 4 * GiB}, id="equal thirds"
        ),
        pytest.param(20 * GiB, [0, 1], [1, 3], {0: 5 * GiB, 1: 15 * GiB}, id="tensor_split 1:3"),
        pytest.param(
            20 * GiB, [1, 0], [3.0, 1.0], {1: 15 * GiB, 0: 5 * GiB}, id="weights follow order"
        ),
        pytest.param(11, [0, 1, 2], None, {0: 3, 1: 3, 2: 3}, id="rounds down"),
        pytest.param(8 * GiB, [1], None, {1: 8 * GiB}, id="one GPU takes all"),
        pytest.param(20 * GiB, [], None, {}, id="no GPUs: CPU"),
        pytest.param(20 * GiB, [], [1.0], {}, id="no GPUs ignores tensor_split"),
    ],
)
def test_split(
    total: int, gpus: list[int], tensor_split: list[float] | None, expected: dict[int, int]
) -> None:
    assert split(total, gpus, tensor_split) == expected


# --- free_on -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "held", "reserve", "expected"),
    [
        pytest.param(S1_GPU0, [], 0, 12 * GiB, id="declared, empty"),
        pytest.param(
            S1_GPU0,
            [res("fast", {0: 5 * GiB}), res("split", {0: 3 * GiB, 1: 3 * GiB})],
            0,
            4 * GiB,
            id="declared, our residents",
        ),
        pytest.param(
            S1_GPU0,
            [res("fast", {0: 5 * GiB}), res("ultra", {1: 10 * GiB})],
            0,
            7 * GiB,
            id="declared, other GPU not counted",
        ),
        pytest.param(
            S1_GPU0,
            [res("fast", {0: 5 * GiB}), res("elsewhere", {0: 9 * GiB}, node="b")],
            0,
            7 * GiB,
            id="declared, other node not counted",
        ),
        pytest.param(
            S1_GPU0,
            [res("fast", {0: 5 * GiB}), res("unknown", None)],
            0,
            7 * GiB,
            id="declared, resident without need",
        ),
        pytest.param(
            S1_GPU0, [res("fast", {0: 5 * GiB})], 1 * GiB, 6 * GiB, id="declared, node reserve"
        ),
        pytest.param(
            Gpu("a", 0, "RTX 4090", 24 * GiB, used=18 * GiB),
            [res("chat", {0: 8 * GiB}), res("embed", {0: 4 * GiB})],
            0,
            6 * GiB,
            id="NVML, a game's 6 GiB subtracted once",
        ),
        pytest.param(
            Gpu("a", 0, "RTX 4090", 24 * GiB, used=18 * GiB),
            [res("chat", {0: 8 * GiB}), res("embed", {0: 4 * GiB})],
            2 * GiB,
            4 * GiB,
            id="NVML, game and reserve",
        ),
        pytest.param(
            Gpu("a", 0, "RTX 4090", 24 * GiB, used=6 * GiB),
            [],
            0,
            18 * GiB,
            id="NVML, only the game",
        ),
        pytest.param(
            Gpu("a", 0, "RTX 4090", 24 * GiB, used=2 * GiB),
            [res("loading", {0: 8 * GiB})],
            0,
            16 * GiB,
            id="NVML, ours not yet allocated: no negative other",
        ),
        pytest.param(
            Gpu("a", 0, "RTX 3060", 12 * GiB, used=12 * GiB),
            [res("big", {0: 14 * GiB})],
            0,
            -2 * GiB,
            id="overcommitted goes negative",
        ),
    ],
)
def test_free_on(gpu: Gpu, held: list[Resident], reserve: int, expected: int) -> None:
    assert free_on(gpu, held, reserve) == expected


# --- plan_eviction -----------------------------------------------------------------------

LRU = residents(
    res("recent", {0: 5 * GiB}, last_used=100),
    res("old", {0: 5 * GiB}, last_used=50),
    res("busy-oldest", {0: 5 * GiB}, busy=True, last_used=10),
    res("pin", {0: 5 * GiB}, pinned=True, last_used=0),
)
ONE_24 = inventory(Gpu("a", 0, "RTX 4090", 24 * GiB))

EVICTIONS = [
    # S1: two 3060s, dense deep-coder (Gemma4 31B) 20 GiB split 1:1 over both.
    pytest.param(
        "deep-coder",
        None,
        residents(),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        S1,
        Eviction("deep-coder"),
        id="S1 dense split fits an empty node",
    ),
    pytest.param(
        "deep-coder",
        None,
        residents(res("fast", {0: 8 * GiB, 1: 8 * GiB}, last_used=5)),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        S1,
        Eviction("deep-coder", ("fast",)),
        id="S1 dense split fits once the loaded tier stops",
    ),
    pytest.param(
        "deep-coder",
        None,
        residents(res("embed", {1: 1 * GiB})),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        S1,
        Eviction("deep-coder"),
        id="S1 dense split beside a small model",
    ),
    pytest.param(
        "deep-coder",
        None,
        residents(res("embed", {1: 1 * GiB})),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        inventory(S1_GPU0, S1_GPU1, reserve={"a": GiB * 3 // 2}),
        Eviction("deep-coder", ("embed",)),
        id="S1 node reserve makes the small model go",
    ),
    pytest.param(
        "deep-coder",
        None,
        residents(),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        inventory(S1_GPU0, S1_GPU1, reserve={"a": GiB * 5 // 2}),
        Eviction(
            "deep-coder",
            reason="deep-coder does not fit on GPU 0 (RTX 3060) on a even alone: needs 10 GiB "
            "(declared), the GPU has 12 GiB, 2.5 GiB reserved",
        ),
        id="S1 node reserve leaves too little",
    ),
    pytest.param(
        "ultra",
        None,
        residents(res("tiny", {0: 3 * GiB})),
        Need("a", {1: 10 * GiB}, moe=True, how="declared"),
        S1,
        Eviction("ultra"),
        id="S1 ultra MoE on GPU 1 alone beside a model on GPU 0",
    ),
    pytest.param(
        "ultra",
        None,
        residents(
            res("tiny", {0: 3 * GiB}, last_used=1), res("balanced", {0: 7 * GiB, 1: 7 * GiB})
        ),
        Need("a", {1: 10 * GiB}, moe=True, how="declared"),
        S1,
        Eviction("ultra", ("balanced",)),
        id="S1 ultra on GPU 1 stops only what shares GPU 1",
    ),
    pytest.param(
        "deep-logic",
        None,
        residents(
            res("r0", {0: 6 * GiB}, last_used=10),
            res("r01", {0: 4 * GiB, 1: 4 * GiB}, last_used=20),
            res("r1", {1: 6 * GiB}, last_used=0),
        ),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        S1,
        Eviction("deep-logic", ("r0", "r01", "r1")),
        id="S1 eviction GPU by GPU",
    ),
    pytest.param(
        "deep-logic",
        None,
        residents(
            res("r0", {0: 6 * GiB}, last_used=10),
            res("r01", {0: 4 * GiB, 1: 4 * GiB}, last_used=20),
            res("r1", {1: 2 * GiB}, last_used=0),
        ),
        Need("a", {0: 10 * GiB, 1: 10 * GiB}, how="declared"),
        S1,
        Eviction("deep-logic", ("r0", "r01")),
        id="S1 a victim for GPU 0 also frees GPU 1",
    ),
    # S4: one 96 GiB card, vLLM shares.
    pytest.param(
        "general",
        None,
        residents(res("coder", {0: S4_CODER}, node="box")),
        Need("box", {0: S4_GENERAL}, how="40% of each GPU's memory"),
        S4,
        Eviction("general"),
        id="S4 shares 0.45 and 0.40 fit together",
    ),
    pytest.param(
        "third",
        None,
        residents(
            res("coder", {0: S4_CODER}, node="box", pinned=True),
            res("general", {0: S4_GENERAL}, node="box", pinned=True),
        ),
        Need("box", {0: S4_THIRD}, how="30% of each GPU's memory"),
        S4,
        Eviction(
            "third",
            blocked_by=("coder", "general"),
            reason="third does not fit on GPU 0 (RTX PRO 6000) on box: needs 28.8 GiB "
            "(30% of each GPU's memory), 14.4 GiB free of 96 GiB; pinned coder, general stay(s)",
        ),
        id="S4 a third share 0.30 does not fit beside pinned 0.85",
    ),
    pytest.param(
        "third",
        None,
        residents(
            res("coder", {0: S4_CODER}, node="box", last_used=2),
            res("general", {0: S4_GENERAL}, node="box", last_used=1),
        ),
        Need("box", {0: S4_THIRD}, how="30% of each GPU's memory"),
        S4,
        Eviction("third", ("general",)),
        id="S4 a third share stops the least recently used",
    ),
    # S5: one 32 GiB card, one heavy model at a time.
    pytest.param(
        "qwen3-coder",
        None,
        residents(res("gpt-oss", {0: 26 * GiB}, node="ws")),
        Need("ws", {0: 20 * GiB}, how="declared"),
        S5,
        Eviction("qwen3-coder", ("gpt-oss",)),
        id="S5 second heavy model needs the first to stop",
    ),
    pytest.param(
        "qwen3-coder",
        "heavy",
        residents(res("gpt-oss", {0: 26 * GiB}, node="ws", group="heavy")),
        Need("ws", {0: 20 * GiB}, how="declared"),
        S5,
        Eviction("qwen3-coder", ("gpt-oss",)),
        id="S5 swap group and memory name the victim once",
    ),
    pytest.param(
        "qwen3-coder",
        None,
        residents(res("gpt-oss", {0: 26 * GiB}, node="ws", pinned=True)),
        Need("ws", {0: 20 * GiB}, how="declared"),
        S5,
        Eviction(
            "qwen3-coder",
            blocked_by=("gpt-oss",),
            reason="qwen3-coder does not fit on GPU 0 (RTX 5090) on ws: needs 20 GiB (declared), "
            "6 GiB free of 32 GiB; pinned gpt-oss stay(s)",
        ),
        id="S5 pinned heavy model blocks",
    ),
    # Order: idle before busy, then least recently used; pinned never.
    pytest.param(
        "t",
        None,
        LRU,
        Need("a", {0: 4 * GiB}, how="declared"),
        ONE_24,
        Eviction("t"),
        id="order: fits in what is free",
    ),
    pytest.param(
        "t",
        None,
        LRU,
        Need("a", {0: 8 * GiB}, how="declared"),
        ONE_24,
        Eviction("t", ("old",)),
        id="order: least recently used idle first",
    ),
    pytest.param(
        "t",
        None,
        LRU,
        Need("a", {0: 12 * GiB}, how="declared"),
        ONE_24,
        Eviction("t", ("old", "recent")),
        id="order: idle ones before the busy one",
    ),
    pytest.param(
        "t",
        None,
        LRU,
        Need("a", {0: 16 * GiB}, how="declared"),
        ONE_24,
        Eviction("t", ("old", "recent", "busy-oldest")),
        id="order: busy one last",
    ),
    pytest.param(
        "t",
        None,
        LRU,
        Need("a", {0: 20 * GiB}, how="declared"),
        ONE_24,
        Eviction(
            "t",
            blocked_by=("pin",),
            reason="t does not fit on GPU 0 (RTX 4090) on a: needs 20 GiB (declared), "
            "19 GiB free of 24 GiB; pinned pin stay(s)",
        ),
        id="order: pinned never",
    ),
    # Edges.
    pytest.param(
        "t",
        None,
        residents(),
        Need("a", {3: 1 * GiB}, how="declared"),
        S1,
        Eviction("t", reason="t: GPU 3 does not exist on a"),
        id="GPU index that does not exist",
    ),
    pytest.param(
        "t",
        None,
        residents(),
        Need("nowhere", {0: 1 * GiB}, how="declared"),
        S1,
        Eviction("t", reason="t: GPU 0 does not exist on nowhere"),
        id="node without GPUs",
    ),
    pytest.param(
        "cpu",
        None,
        residents(res("fast", {0: 12 * GiB, 1: 12 * GiB})),
        Need("a", {}, how="CPU only"),
        S1,
        Eviction("cpu"),
        id="CPU-only need never evicts by memory",
    ),
    pytest.param(
        "cpu",
        "g",
        residents(res("fast", {0: 12 * GiB, 1: 12 * GiB}), res("mate", None, group="g")),
        Need("a", {}, how="CPU only"),
        S1,
        Eviction("cpu", ("mate",)),
        id="CPU-only need still stops its swap group",
    ),
    pytest.param(
        "t",
        None,
        residents(res("fast", {0: 12 * GiB})),
        None,
        S1,
        Eviction("t"),
        id="no need: memory unchecked",
    ),
    pytest.param(
        "t",
        None,
        residents(res("fast", {0: 12 * GiB})),
        Need("a", {0: 4 * GiB}, how="declared"),
        None,
        Eviction("t"),
        id="no inventory: memory unchecked",
    ),
    pytest.param(
        "t",
        "g",
        residents(
            res("mate", {0: 4 * GiB}, group="g", last_used=9),
            res("lru", {0: 4 * GiB}, last_used=1),
            res("mru", {0: 4 * GiB}, last_used=5),
        ),
        Need("a", {0: 8 * GiB}, how="declared"),
        S1,
        Eviction("t", ("mate", "lru")),
        id="swap-group victims then memory victims, no duplicates",
    ),
    pytest.param(
        "t",
        "g",
        residents(res("p", None, group="g", pinned=True), res("q", None, group="g")),
        Need("a", {0: 1 * GiB}, how="declared"),
        S1,
        Eviction(
            "t",
            blocked_by=("p",),
            reason="t cannot start: pinned p holds its swap group 'g'",
        ),
        id="pinned swap-group member blocks",
    ),
    pytest.param(
        "t",
        None,
        residents(res("t", {0: 12 * GiB})),
        Need("a", {0: 10 * GiB}, how="declared"),
        S1,
        Eviction("t"),
        id="the target's own instance is no obstacle",
    ),
    pytest.param(
        "huge",
        None,
        residents(res("fast", {0: 4 * GiB}), res("other", {0: 2 * GiB})),
        Need("a", {0: 14 * GiB}, how="declared"),
        S1,
        Eviction(
            "huge",
            reason="huge does not fit on GPU 0 (RTX 3060) on a even alone: needs 14 GiB "
            "(declared), the GPU has 12 GiB",
        ),
        id="bigger than the whole GPU, refused with everything stopped",
    ),
    pytest.param(
        "huge",
        None,
        residents(),
        Need("a", {0: 4 * GiB, 1: 13 * GiB}, how="declared"),
        S1,
        Eviction(
            "huge",
            reason="huge does not fit on GPU 1 (RTX 3060) on a even alone: needs 13 GiB "
            "(declared), the GPU has 12 GiB",
        ),
        id="bigger than the second GPU names that GPU",
    ),
]


@pytest.mark.parametrize(
    ("target", "group", "held", "need", "inv", "expected"),
    EVICTIONS,
)
def test_plan_eviction(
    target: str,
    group: str | None,
    held: dict[str, Resident],
    need: Need | None,
    inv: Inventory | None,
    expected: Eviction,
) -> None:
    assert plan_eviction(target, group, held, need, inv) == expected


def test_swap_group_victim_frees_its_memory_on_an_nvml_gpu() -> None:
    # S5, read by NVML: GPT-OSS holds 26 GiB, the desktop 0.5 GiB.
    gpu = Gpu("ws", 0, "RTX 5090", 32 * GiB, used=int(26.5 * GiB))
    held = residents(res("gpt-oss", {0: 26 * GiB}, node="ws", group="heavy"))
    need = Need("ws", {0: 20 * GiB}, how="declared")
    assert plan_eviction("qwen3-coder", "heavy", held, need, inventory(gpu)) == Eviction(
        "qwen3-coder", ("gpt-oss",)
    )


def test_refusal_free_figure_on_an_nvml_gpu_counts_victims_freed() -> None:
    # used: pinned 10 + idle 6 + a game 2. Stopping "idle" would leave 24 - 10 - 2 = 12 free.
    gpu = Gpu("a", 0, "RTX 4090", 24 * GiB, used=18 * GiB)
    held = residents(res("pin", {0: 10 * GiB}, pinned=True), res("idle", {0: 6 * GiB}))
    need = Need("a", {0: 16 * GiB}, how="declared")
    eviction = plan_eviction("t", None, held, need, inventory(gpu))
    assert eviction.reason == (
        "t does not fit on GPU 0 (RTX 4090) on a: needs 16 GiB (declared), "
        "12 GiB free of 24 GiB; pinned pin stay(s)"
    )


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        pytest.param(
            residents(res("pin", {0: 10 * GiB}, pinned=True), res("idle", {0: 6 * GiB})),
            "t does not fit on GPU 0 (RTX 4090) on a: needs 16 GiB (declared), "
            "14 GiB free of 24 GiB; pinned pin stay(s)",
            id="declared GPU: free once the unpinned stop",
        ),
    ],
)
def test_refusal_free_figure_on_a_declared_gpu(held: dict[str, Resident], expected: str) -> None:
    need = Need("a", {0: 16 * GiB}, how="declared")
    eviction = plan_eviction("t", None, held, need, ONE_24)
    assert not eviction.possible and eviction.explain() == expected


# --- slow_link ---------------------------------------------------------------------------

S1_LINK_REFUSAL = (
    "an MoE model split across 2 GPUs would use GPU 0 (RTX 3060) on a on a PCIe 3.0 x4 link "
    "(slower than x8): give it GPUs on fast links only"
)


@pytest.mark.parametrize(
    ("need", "gpus", "expected"),
    [
        pytest.param(
            Need("a", {0: 5 * GiB, 1: 5 * GiB}, moe=True),
            [S1_GPU0, S1_GPU1],
            S1_LINK_REFUSAL,
            id="MoE across the x4 GPU is refused",
        ),
        pytest.param(
            Need("a", {1: 10 * GiB}, moe=True), [S1_GPU0, S1_GPU1], None, id="MoE on GPU 1 alone"
        ),
        pytest.param(
            Need("a", {0: 10 * GiB}, moe=True), [S1_GPU0, S1_GPU1], None, id="MoE on x4 alone"
        ),
        pytest.param(
            Need("a", {0: 10 * GiB, 1: 10 * GiB}, moe=False),
            [S1_GPU0, S1_GPU1],
            None,
            id="dense across x4 is fine",
        ),
        pytest.param(
            Need("a", {0: 5 * GiB, 1: 5 * GiB}, moe=True),
            [Gpu("a", 0, "GPU", 12 * GiB), Gpu("a", 1, "GPU", 12 * GiB)],
            None,
            id="unknown width is fine",
        ),
        pytest.param(
            Need("a", {0: 5 * GiB, 1: 5 * GiB}, moe=True),
            [
                Gpu("a", 0, "GPU", 12 * GiB, pcie_gen=4, pcie_width=8),
                Gpu("a", 1, "GPU", 12 * GiB, pcie_gen=4, pcie_width=16),
            ],
            None,
            id="x8 is not slower than x8",
        ),
        pytest.param(
            Need("a", {1: 5 * GiB, 2: 5 * GiB}, moe=True),
            [S1_GPU0, S1_GPU1, Gpu("a", 2, "RTX 3060", 12 * GiB, pcie_gen=4, pcie_width=16)],
            None,
            id="x4 GPU unused by the model",
        ),
        pytest.param(
            Need("a", {0: 5 * GiB, 1: 5 * GiB}, moe=True),
            [Gpu("a", 0, "RTX 3060", 12 * GiB, pcie_width=4), S1_GPU1],
            "an MoE model split across 2 GPUs would use GPU 0 (RTX 3060) on a on a PCIe x4 link "
            "(slower than x8): give it GPUs on fast links only",
            id="unknown generation, known width",
        ),
    ],
)
def test_slow_link(need: Need, gpus: list[Gpu], expected: str | None) -> None:
    assert slow_link(need, gpus, 8) == expected


# --- estimate ----------------------------------------------------------------------------

GEMMA = GgufFacts(
    size_bytes=253113024,
    architecture="gemma3",
    context_length=32768,
    block_count=18,
    head_count_kv=1,
    key_length=256,
    value_length=256,
)
GEMMA_KV_1024 = 18 * 1024 * 512 * 2


@pytest.mark.parametrize(
    ("facts", "context", "expected"),
    [
        pytest.param(GEMMA, 1024, GEMMA_KV_1024, id="gemma 270M, 1024 tokens"),
        pytest.param(GEMMA, 32768, 18 * 32768 * 512 * 2, id="gemma 270M, trained context"),
        pytest.param(
            GgufFacts(1, block_count=18, head_count_kv=1, key_length=256),
            1024,
            GEMMA_KV_1024,
            id="value length defaults to key length",
        ),
        pytest.param(
            GgufFacts(1, block_count=48, head_count_kv=4, key_length=128, value_length=64),
            100,
            48 * 100 * 4 * (128 + 64) * 2,
            id="K and V of different lengths",
        ),
        pytest.param(GgufFacts(1, head_count_kv=1, key_length=256), 1024, 0, id="no block count"),
        pytest.param(GgufFacts(1, block_count=18, key_length=256), 1024, 0, id="no KV heads"),
        pytest.param(GgufFacts(1, block_count=18, head_count_kv=1), 1024, 0, id="no key length"),
    ],
)
def test_kv_cache_bytes(facts: GgufFacts, context: int, expected: int) -> None:
    assert kv_cache_bytes(facts, context) == expected


@pytest.mark.parametrize(
    ("facts", "context", "overhead", "kv", "how"),
    [
        pytest.param(
            GEMMA,
            1024,
            512 * MiB,
            GEMMA_KV_1024,
            "GGUF estimate: weights 241.4 MiB + KV cache 18 MiB for 1024 tokens + overhead 512 MiB",
            id="configured context",
        ),
        pytest.param(
            GEMMA,
            None,
            0,
            18 * 32768 * 512 * 2,
            "GGUF estimate: weights 241.4 MiB + KV cache 576 MiB for 32768 tokens + overhead 0 B",
            id="trained context when none is configured",
        ),
        pytest.param(
            GgufFacts(253113024, block_count=18, head_count_kv=1, key_length=256),
            None,
            0,
            18 * 4096 * 512 * 2,
            "GGUF estimate: weights 241.4 MiB + KV cache 72 MiB for 4096 tokens + overhead 0 B",
            id="4096 tokens when nothing says",
        ),
    ],
)
def test_estimate_gguf(
    facts: GgufFacts, context: int | None, overhead: int, kv: int, how: str
) -> None:
    est = estimate_gguf(facts, context, overhead)
    assert (est.weights, est.kv_cache, est.overhead, est.how) == (
        facts.size_bytes,
        kv,
        overhead,
        how,
    )
    assert est.total == facts.size_bytes + kv + overhead


NEED_CONFIG = """\
placement:
  overhead: 256MiB
nodes:
  a:
    gpus:
      - {index: 0, name: RTX 3060, memory: 12GiB, pcie_gen: 3, pcie_width: 4}
      - {index: 1, name: RTX 3060, memory: 12GiB, pcie_gen: 4, pcie_width: 16}
models:
  declared:
    engine: llama.cpp
    weights: /models/gemma4-31b.gguf
    gpus: [0, 1]
    tensor_split: [1, 3]
    memory: 16GiB
  declared-all:
    engine: llama.cpp
    weights: /models/gemma4-31b.gguf
    memory: 20GiB
  share:
    engine: vllm
    model: Qwen/Qwen2.5-14B-Instruct
    memory_share: 0.45
  share-one:
    engine: vllm
    model: Qwen/Qwen2.5-14B-Instruct
    gpus: [1]
    memory_share: 0.5
  gguf:
    engine: llama.cpp
    weights: /models/gemma-3-270m.gguf
    context: 1024
    gpus: [0, 1]
  gguf-split:
    engine: llama.cpp
    weights: /models/gemma-3-270m.gguf
    context: 1024
    gpus: [0, 1]
    tensor_split: [1, 3]
  cpu:
    engine: llama.cpp
    weights: /models/gemma-3-270m.gguf
    gpus: []
    memory: 1GiB
  ultra:
    engine: llama.cpp
    weights: /models/qwen-122b.gguf
    gpus: [1]
    memory: 10GiB
  not-moe:
    engine: llama.cpp
    weights: /models/qwen-122b.gguf
    gpus: [1]
    memory: 10GiB
    moe: false
  unknown:
    engine: command
    command: [server, --port, "{port}"]
    gpus: [0]
"""
CONFIG: Config = parse_config(NEED_CONFIG, "/etc/modelyard/test.yaml", {})
GEMMA_TOTAL = 253113024 + GEMMA_KV_1024
GEMMA_HOW = "GGUF estimate: weights 241.4 MiB + KV cache 18 MiB for 1024 tokens + 256 MiB per GPU"
MOE = GgufFacts(60 * GiB, architecture="qwen3moe", expert_count=128)


@pytest.mark.parametrize(
    ("model", "facts", "expected"),
    [
        pytest.param(
            "declared",
            None,
            Need("a", {0: 4 * GiB, 1: 12 * GiB}, False, "declared"),
            id="declared memory split by tensor_split",
        ),
        pytest.param(
            "declared-all",
            None,
            Need("a", {0: 10 * GiB, 1: 10 * GiB}, False, "declared"),
            id="declared memory over all the node's GPUs",
        ),
        pytest.param(
            "declared",
            GEMMA,
            Need("a", {0: 4 * GiB, 1: 12 * GiB}, False, "declared"),
            id="declared memory wins over the GGUF",
        ),
        pytest.param(
            "share",
            None,
            Need(
                "a",
                {0: int(0.45 * 12 * GiB), 1: int(0.45 * 12 * GiB)},
                False,
                "45% of each GPU's memory",
            ),
            id="memory_share of each GPU",
        ),
        pytest.param(
            "share-one",
            None,
            Need("a", {1: 6 * GiB}, False, "50% of each GPU's memory"),
            id="memory_share of its one GPU",
        ),
        pytest.param(
            "gguf",
            GEMMA,
            Need(
                "a",
                {0: GEMMA_TOTAL // 2 + 256 * MiB, 1: GEMMA_TOTAL // 2 + 256 * MiB},
                False,
                GEMMA_HOW,
            ),
            id="GGUF estimate plus overhead per GPU",
        ),
        pytest.param(
            "gguf-split",
            GEMMA,
            Need(
                "a",
                {0: GEMMA_TOTAL // 4 + 256 * MiB, 1: GEMMA_TOTAL * 3 // 4 + 256 * MiB},
                False,
                GEMMA_HOW,
            ),
            id="GGUF estimate split by tensor_split",
        ),
        pytest.param(
            "gguf",
            None,
            Need("a", {0: 0, 1: 0}, False, "unknown: declare `memory` to have it checked"),
            id="GGUF without facts: unknown",
        ),
        pytest.param("cpu", GEMMA, Need("a", {}, False, "CPU only"), id="gpus: [] is CPU only"),
        pytest.param(
            "ultra",
            MOE,
            Need("a", {1: 10 * GiB}, True, "declared"),
            id="MoE from expert_count",
        ),
        pytest.param(
            "not-moe",
            MOE,
            Need("a", {1: 10 * GiB}, False, "declared"),
            id="moe: false overrides the GGUF",
        ),
        pytest.param(
            "ultra",
            GgufFacts(60 * GiB, expert_count=1),
            Need("a", {1: 10 * GiB}, False, "declared"),
            id="one expert is not MoE",
        ),
        pytest.param(
            "unknown",
            None,
            Need("a", {0: 0}, False, "unknown: declare `memory` to have it checked"),
            id="command model without memory: unknown",
        ),
    ],
)
def test_need_for(model: str, facts: GgufFacts | None, expected: Need) -> None:
    assert need_for(CONFIG, model, S1.of("a"), facts) == expected


# --- decide with nodes and memory --------------------------------------------------------

T = Timing(drain_timeout=30, max_swap_delay=5, restart_backoff=1, restart_backoff_max=60)
GATED = "node a is in mode 'gaming' (gated): it takes only requests that force it"
DRAINED = "node a is in mode 'maintenance' (drained): it takes nothing new"
UNREACHABLE = "node a is unreachable: its agent does not answer"
MOE_BLOCKED = S1_LINK_REFUSAL


def rule(name: str, per_gpu: Mapping[int, int] | None = None, **kw: object) -> ModelFacts:
    need = None if per_gpu is None else Need("a", dict(per_gpu), how="declared")
    return ModelFacts(name, node="a", need=need, **kw)  # type: ignore[arg-type]


DECISIONS = [
    pytest.param(
        {"big": rule("big", {0: 10 * GiB}), "res": rule("res", {0: 8 * GiB})},
        {"res": InstanceView("res", State.READY, in_flight=2)},
        [Waiter(1, "big", 10), Waiter(2, "res", 11)],
        {},
        12,
        [Grant(2, "res")],
        15,
        id="memory swap: busy resident keeps serving until max_swap_delay",
    ),
    pytest.param(
        {"big": rule("big", {0: 10 * GiB}), "res": rule("res", {0: 8 * GiB})},
        {"res": InstanceView("res", State.READY, in_flight=2)},
        [Waiter(1, "big", 10), Waiter(2, "res", 11)],
        {},
        15,
        [Drain("res", "swap to big")],
        None,
        id="memory swap: busy resident drains after max_swap_delay",
    ),
    pytest.param(
        {"big": rule("big", {0: 10 * GiB}), "res": rule("res", {0: 8 * GiB})},
        {"res": InstanceView("res", State.READY)},
        [Waiter(1, "big", 10)],
        {},
        10,
        [Drain("res", "swap to big")],
        None,
        id="memory swap: idle resident drains at once",
    ),
    pytest.param(
        {"big": rule("big", {0: 10 * GiB}), "pin": rule("pin", {0: 8 * GiB}, pinned=True)},
        {"pin": InstanceView("pin", State.READY)},
        [Waiter(1, "big", 10)],
        {},
        10,
        [
            Refuse(
                1,
                "big",
                Code.SWAP_REFUSED,
                "big does not fit on GPU 0 (RTX 3060) on a: needs 10 GiB (declared), "
                "4 GiB free of 12 GiB; pinned pin stay(s)",
            )
        ],
        None,
        id="memory: pinned resident refuses with 409",
    ),
    pytest.param(
        {"huge": rule("huge", {0: 14 * GiB})},
        {},
        [Waiter(1, "huge", 0)],
        {},
        0,
        [
            Refuse(
                1,
                "huge",
                Code.MODEL_UNAVAILABLE,
                "huge does not fit on GPU 0 (RTX 3060) on a even alone: needs 14 GiB "
                "(declared), the GPU has 12 GiB",
            )
        ],
        None,
        id="memory: bigger than the GPU refuses with 503",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0)],
        {"a": NodeView("a", "gaming", "gated")},
        0,
        [Refuse(1, "m", Code.MODEL_UNAVAILABLE, GATED)],
        None,
        id="gated node refuses a plain request",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {"m": InstanceView("m", State.READY)},
        [Waiter(1, "m", 0)],
        {"a": NodeView("a", "gaming", "gated")},
        0,
        [Refuse(1, "m", Code.MODEL_UNAVAILABLE, GATED)],
        None,
        id="gated node refuses even a loaded model",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0, force=True)],
        {"a": NodeView("a", "gaming", "gated")},
        0,
        [Start("m", "request waiting")],
        None,
        id="gated node takes a forced request",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0, admin=True)],
        {"a": NodeView("a", "gaming", "gated")},
        0,
        [Start("m", "request waiting")],
        None,
        id="gated node takes an admin start",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0, force=True)],
        {"a": NodeView("a", "maintenance", "drained")},
        0,
        [Refuse(1, "m", Code.MODEL_UNAVAILABLE, DRAINED)],
        None,
        id="drained node refuses even force",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0, admin=True)],
        {"a": NodeView("a", "maintenance", "drained")},
        0,
        [Start("m", "request waiting")],
        None,
        id="drained node takes an admin start",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0, admin=True, force=True)],
        {"a": NodeView("a", "open", "open", reachable=False)},
        0,
        [Refuse(1, "m", Code.MODEL_UNAVAILABLE, UNREACHABLE)],
        None,
        id="unreachable node refuses even admin",
    ),
    pytest.param(
        {"m": rule("m", {1: 4 * GiB})},
        {},
        [Waiter(1, "m", 0)],
        {"a": NodeView("a", "open", "open")},
        0,
        [Start("m", "request waiting")],
        None,
        id="open node starts",
    ),
    pytest.param(
        {"ultra": rule("ultra", {0: 5 * GiB, 1: 5 * GiB}, blocked=MOE_BLOCKED)},
        {},
        [Waiter(1, "ultra", 0)],
        {},
        0,
        [Refuse(1, "ultra", Code.SWAP_REFUSED, MOE_BLOCKED)],
        None,
        id="blocked model refused with 409",
    ),
    pytest.param(
        {"x": rule("x", {0: 3 * GiB}), "y": rule("y", {0: 3 * GiB})},
        {},
        [Waiter(1, "x", 0), Waiter(2, "y", 1)],
        {},
        1,
        [Start("x", "request waiting")],
        None,
        id="two cold models on one GPU start one at a time",
    ),
    pytest.param(
        {"x": rule("x", {0: 3 * GiB}), "y": rule("y", {0: 3 * GiB})},
        {"x": InstanceView("x", State.STARTING)},
        [Waiter(1, "x", 0), Waiter(2, "y", 1)],
        {},
        1,
        [],
        None,
        id="second model on the GPU waits while the first starts",
    ),
    pytest.param(
        {"x": rule("x", {0: 3 * GiB}), "y": rule("y", {1: 3 * GiB})},
        {},
        [Waiter(1, "x", 0), Waiter(2, "y", 1)],
        {},
        1,
        [Start("x", "request waiting"), Start("y", "request waiting")],
        None,
        id="two cold models on different GPUs start together",
    ),
    pytest.param(
        {"x": rule("x", {0: 3 * GiB, 1: 3 * GiB}), "y": rule("y", {1: 3 * GiB})},
        {},
        [Waiter(1, "y", 0), Waiter(2, "x", 1)],
        {},
        1,
        [Start("y", "request waiting")],
        None,
        id="a split model waits for a start on one of its GPUs",
    ),
]


@pytest.mark.parametrize(
    ("models", "instances", "waiters", "nodes", "now", "actions", "wake_at"),
    DECISIONS,
)
def test_decide_with_nodes_and_memory(
    models: dict[str, ModelFacts],
    instances: dict[str, InstanceView],
    waiters: list[Waiter],
    nodes: dict[str, NodeView],
    now: float,
    actions: list[Action],
    wake_at: float | None,
) -> None:
    plan = decide(models, instances, waiters, T, now, nodes, S1)
    assert plan.actions == actions
    assert plan.wake_at == wake_at


def test_decide_swaps_heavy_models_on_an_nvml_gpu() -> None:
    # S5 as NVML reads it: GPT-OSS loaded (26 GiB) and the desktop (0.5 GiB).
    gpu = Gpu("a", 0, "RTX 5090", 32 * GiB, used=int(26.5 * GiB))
    models = {
        "gpt-oss": rule("gpt-oss", {0: 26 * GiB}, swap_group="heavy"),
        "qwen3-coder": rule("qwen3-coder", {0: 20 * GiB}, swap_group="heavy"),
    }
    instances = {"gpt-oss": InstanceView("gpt-oss", State.READY)}
    plan = decide(models, instances, [Waiter(1, "qwen3-coder", 0)], T, 0, {}, inventory(gpu))
    assert plan.actions == [Drain("gpt-oss", "swap to qwen3-coder")]


@pytest.mark.parametrize(
    ("models", "fatal", "expected"),
    [
        pytest.param(
            "  m: {engine: llama.cpp, weights: m.gguf, gpus: [0, 1], tensor_split: [1, 3],"
            " memory: 20GiB}\n",
            True,
            "test.yaml:9: models.m: needs 15 GiB on GPU 1 (RTX 3060), which has 12 GiB for "
            "models: it can never start",
            id="a need larger than a declared GPU is a config error",
        ),
        pytest.param(
            "  m: {engine: llama.cpp, weights: m.gguf, gpus: [0, 1], memory: 16GiB, moe: true}\n",
            True,
            "models.m.gpus: an MoE model split across 2 GPUs would use GPU 0 (RTX 3060) on a on "
            "a PCIe 3.0 x4 link",
            id="MoE across the x4 slot is refused by default",
        ),
        pytest.param(
            "  m: {engine: llama.cpp, weights: m.gguf, gpus: [1], memory: 10GiB, moe: true}\n",
            False,
            None,
            id="MoE on the fast GPU alone is fine",
        ),
    ],
)
def test_config_check_knows_what_can_never_fit(
    models: str, fatal: bool, expected: str | None
) -> None:
    text = NEED_CONFIG.split("models:")[0] + "models:\n" + models
    if fatal:
        with pytest.raises(ConfigError) as info:
            parse_config(text, "/etc/modelyard/test.yaml", {})
        assert expected is not None and expected in str(info.value)
    else:
        assert parse_config(text, "/etc/modelyard/test.yaml", {}).warnings == []


def test_moe_on_slow_link_can_be_only_a_warning() -> None:
    head = NEED_CONFIG.split("models:")[0]
    head = head.replace("placement:\n", "placement:\n  moe_on_slow_link: warn\n")
    model = "  m: {engine: llama.cpp, weights: m.gguf, gpus: [0, 1], memory: 16GiB, moe: true}\n"
    config = parse_config(head + "models:\n" + model, "/etc/modelyard/test.yaml", {})
    assert len(config.warnings) == 1 and "PCIe 3.0 x4" in config.warnings[0]


# -- a model across nodes, span: auto (placement.choose_parts) ---------------------------------

GB = 1024**3


@pytest.mark.parametrize(
    ("need", "own", "offers", "chosen"),
    [
        (8 * GB, 10 * GB, [Offer("a", 20 * GB, 10)], ()),  # its own node holds it: no parts
        # the fewest: one node that holds the rest beats two faster ones
        (30 * GB, 10 * GB, [Offer("a", 12 * GB, 10), Offer("b", 12 * GB, 10),
                            Offer("c", 25 * GB, 1)], ("c",)),
        # as many: the faster slowest link, then the more free
        (20 * GB, 10 * GB, [Offer("a", 12 * GB, 1), Offer("b", 11 * GB, 10),
                            Offer("c", 30 * GB, None)], ("b",)),
        (20 * GB, 0, [Offer("a", 12 * GB, 2.5), Offer("b", 9 * GB, 2.5),
                      Offer("c", 11 * GB, 2.5)], ("a", "c")),
    ],
)  # fmt: skip
def test_choose_parts(need: int, own: int, offers: list[Offer], chosen: tuple[str, ...]) -> None:
    assert choose_parts(need, own, offers) == chosen


def test_choose_parts_says_what_is_free_when_nothing_holds_it() -> None:
    why = choose_parts(64 * GB, 8 * GB, [Offer("a", 12 * GB), Offer("b", 4 * GB)])
    assert why == "needs 64 GiB; its node has 8 GiB free, the others: a 12 GiB, b 4 GiB"
    assert choose_parts(9 * GB, 8 * GB, []) == (
        "needs 9 GiB; its node has 8 GiB free, the others: no other node open"
    )


def test_a_model_across_nodes_is_not_refused_for_its_whole_need_on_its_own_node() -> None:
    from modelyard.facts import model_facts

    text = (
        "nodes:\n  server: {address: 10.0.0.1, gpus: [{index: 0, memory: 8GiB}]}\n"
        "  gamer: {url: 'http://10.0.0.2:9100', gpus: [{index: 0, memory: 24GiB}]}\n"
        "models:\n"
        "  big: {engine: llama.cpp, weights: /m.gguf, node: gamer, span: [server], memory: 27GiB}\n"
    )
    config = parse_config(text, "/etc/modelyard/test.yaml", {})
    with pytest.raises(ConfigError, match="it can never start"):  # on the gamer alone: never
        parse_config(text.replace(" span: [server],", ""), "/etc/modelyard/test.yaml", {})

    class Node:  # what model_facts reads of a node
        def __init__(self, name: str) -> None:
            self.name = name

        def gpus(self) -> list[Gpu]:
            return [Gpu(self.name, 0, "GPU", 24 * GB)]

        def need(self, model: str) -> Need:
            return need_for(config, model, self.gpus(), None)

    facts = model_facts(config, {"server": Node("server"), "gamer": Node("gamer")})  # type: ignore[dict-item]
    # Its share on the gamer is checked with its parts at start (span.start), not there.
    assert facts["big"].need is None


# --- a model across nodes, once it runs ----------------------------------------------------
# S2: the 32B across the gamer's 3090 (its node) and the server's 3070. Its parts hold
# memory on both nodes' GPUs (span.start records them): other models see less free there,
# and may make room by stopping it, as they would any resident.

SERVER_GPU = Gpu("server", 0, "RTX 3070", 8 * GiB)
GAMER_GPU = Gpu("gamer", 0, "RTX 3090", 24 * GiB)
S2 = inventory(SERVER_GPU, GAMER_GPU)
BIG_PARTS = (Need("server", {0: 4 * GiB}), Need("gamer", {0: 14 * GiB}))


def big(*, pinned: bool = False, busy: bool = False, last_used: float = 0.0) -> Resident:
    return Resident("big", pinned, None, None, busy, last_used, BIG_PARTS)


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        pytest.param(SERVER_GPU, 4 * GiB, id="declared: what its part holds is not free"),
        pytest.param(GAMER_GPU, 10 * GiB, id="its own node's share too"),
        pytest.param(
            Gpu("server", 0, "RTX 3070", 8 * GiB, used=5 * GiB, measured=True),
            3 * GiB,
            id="NVML: its part is ours, the rest other programs'",
        ),
        pytest.param(Gpu("lab", 0, "A4000", 16 * GiB), 16 * GiB, id="a node it does not span"),
    ],
)
def test_free_on_counts_what_a_model_across_nodes_holds(gpu: Gpu, expected: int) -> None:
    assert free_on(gpu, [big()]) == expected


@pytest.mark.parametrize(
    ("held", "need", "expected"),
    [
        pytest.param([big()], 2 * GiB, Eviction("coder"), id="fits beside its part"),
        pytest.param(
            [big()], 6 * GiB, Eviction("coder", ("big",)), id="an idle one stops to make room"
        ),
        pytest.param(
            [big(busy=True), res("small", {0: 2 * GiB}, node="server")],
            3 * GiB,
            Eviction("coder", ("small",)),
            id="idle before busy, as for any resident",
        ),
        pytest.param(
            [big(last_used=1), res("small", {0: 2 * GiB}, node="server", last_used=5)],
            3 * GiB,
            Eviction("coder", ("big",)),
            id="least recently used first",
        ),
        pytest.param(
            [big(pinned=True)],
            6 * GiB,
            Eviction(
                "coder",
                blocked_by=("big",),
                reason="coder does not fit on GPU 0 (RTX 3070) on server: needs 6 GiB "
                "(declared), 4 GiB free of 8 GiB; pinned big stay(s)",
            ),
            id="a pinned one stays, and is named",
        ),
    ],
)
def test_a_model_across_nodes_is_a_resident_of_every_node_it_holds(
    held: list[Resident], need: int, expected: Eviction
) -> None:
    wanted = Need("server", {0: need}, how="declared")
    assert plan_eviction("coder", None, residents(*held), wanted, S2) == expected


def test_decide_stops_an_idle_model_across_nodes_for_a_model_on_its_part_s_node() -> None:
    models = {
        "big": ModelFacts("big", node="gamer", spans=("server",)),
        "coder": ModelFacts("coder", node="server", need=Need("server", {0: 6 * GiB})),
    }
    ready = {"big": InstanceView("big", State.READY, parts=BIG_PARTS)}
    plan = decide(models, ready, [Waiter(1, "coder", 0)], T, 0, {}, S2)
    assert plan.actions == [Drain("big", "swap to coder")]
    # Without what its parts hold, the server's GPU looks empty: both would run, over 8 GiB.
    plan = decide(
        models, {"big": InstanceView("big", State.READY)}, [Waiter(1, "coder", 0)], T, 0, {}, S2
    )
    assert plan.actions == [Start("coder", "request waiting")]


@pytest.mark.parametrize(
    ("starting", "waiting", "expected"),
    [
        pytest.param("big", "coder", [], id="a model on its part's GPU waits for its start"),
        pytest.param("coder", "big", [], id="it waits for a start on a GPU of its nodes"),
        pytest.param(
            "lab", "big", [Start("big", "request waiting")], id="a start elsewhere is no matter"
        ),
    ],
)
def test_a_model_across_nodes_starts_alone_on_its_nodes_gpus(
    starting: str, waiting: str, expected: list[Action]
) -> None:
    # Its split is worked out from what is free on every GPU of its nodes when it starts:
    # two starts there at once would both count the same free memory.
    models = {
        "big": ModelFacts("big", node="gamer", spans=("server",)),
        "coder": ModelFacts("coder", node="server", need=Need("server", {0: 2 * GiB})),
        "lab": ModelFacts("lab", node="lab", need=Need("lab", {0: 2 * GiB})),
    }
    lab = inventory(SERVER_GPU, GAMER_GPU, Gpu("lab", 0, "A4000", 16 * GiB))
    instances = {starting: InstanceView(starting, State.STARTING)}
    plan = decide(models, instances, [Waiter(1, waiting, 0)], T, 0, {}, lab)
    assert plan.actions == expected
