"""A machine's CPU and memory from /proc text, and the ``sample`` event: built and
published only while someone subscribes to it, never stored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from modelyard.cluster_watch import ClusterWatch, sample_of
from modelyard.events import KINDS, Hub
from modelyard.lifecycle import NodeView
from modelyard.machine import (
    Machine,
    MachineSampler,
    busy_percent,
    parse_loadavg,
    parse_meminfo,
    parse_stat,
)
from modelyard.placement import Gpu

STAT = """\
cpu  4705 150 1120 16250 520 0 25 0 0 0
cpu0 1393 50 277 4177 100 0 8 0 0 0
cpu1 1200 40 300 4000 140 0 7 0 0 0
cpu2 1100 30 280 4100 150 0 5 0 0 0
cpu3 1012 30 263 3973 130 0 5 0 0 0
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
ctxt 1990473
btime 1062191376
processes 2915
procs_running 1
procs_blocked 0
"""

MEMINFO = """\
MemTotal:       16384000 kB
MemFree:         1024000 kB
MemAvailable:    8192000 kB
Buffers:          512000 kB
Cached:          4096000 kB
SwapTotal:             0 kB
HugePages_Total:       0
"""


def test_stat_gives_busy_and_total_jiffies_and_the_cpu_count() -> None:
    times, cpus = parse_stat(STAT)
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy
    total = 4705 + 150 + 1120 + 16250 + 520 + 0 + 25 + 0
    assert times == (total - 16250 - 520, total)
    assert cpus == 4
    assert parse_stat("intr 1 2 3\n") == (None, None)
    assert parse_stat("") == (None, None)


def test_busy_share_between_two_readings() -> None:
    assert busy_percent((100, 1000), (150, 1100)) == 50.0
    assert busy_percent((100, 1000), (100, 1100)) == 0.0
    assert busy_percent((100, 1000), (100, 1000)) is None  # no time passed
    assert busy_percent((100, 1000), (400, 1100)) == 100.0  # never above 100


def test_meminfo_in_bytes_with_an_estimate_on_old_kernels() -> None:
    assert parse_meminfo(MEMINFO) == (16384000 * 1024, 8192000 * 1024)
    old = MEMINFO.replace("MemAvailable:    8192000 kB\n", "")
    assert parse_meminfo(old) == (16384000 * 1024, (1024000 + 512000 + 4096000) * 1024)
    assert parse_meminfo("") == (None, None)


def test_loadavg_reads_the_one_minute_average() -> None:
    assert parse_loadavg("0.52 0.40 0.31 1/234 5678\n") == 0.52
    assert parse_loadavg("") is None
    assert parse_loadavg("x y z") is None


def test_sampler_gives_the_cpu_share_since_its_last_sample(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  100 0 0 900 0 0 0 0 0 0\ncpu0 100 0 0 900 0 0 0 0\n")
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "loadavg").write_text("1.25 1.00 0.75 2/300 42\n")
    sampler = MachineSampler(tmp_path)
    first = sampler.sample()
    assert first == Machine(None, 1, 1.25, 16384000 * 1024, 8192000 * 1024)  # a baseline
    (tmp_path / "stat").write_text("cpu  175 0 0 925 0 0 0 0 0 0\ncpu0 175 0 0 925 0 0 0 0\n")
    assert sampler.sample().cpu_percent == 75.0
    assert sampler.sample().cpu_percent == 75.0  # no tick since: the last share stays
    (tmp_path / "stat").write_text("cpu  175 0 0 1025 0 0 0 0 0 0\ncpu0 175 0 0 1025 0 0 0 0\n")
    assert sampler.sample().cpu_percent == 0.0


def test_without_proc_every_field_is_none(tmp_path: Path) -> None:
    machine = MachineSampler(tmp_path / "no-proc").sample()
    assert machine == Machine()
    assert machine.as_dict() == {"cpu_percent": None, "cpus": None, "load1": None,
                                 "memory_total": None, "memory_available": None}  # fmt: skip


def test_this_machine_reads_on_linux() -> None:
    sampler = MachineSampler()
    machine = sampler.sample()
    if not Path("/proc/stat").exists():
        return
    assert machine.cpus and machine.cpus >= 1
    assert machine.memory_total and machine.memory_available
    assert 0 < machine.memory_available <= machine.memory_total
    assert machine.load1 is not None and machine.load1 >= 0


def test_an_agent_report_is_read_back_and_garbage_is_none() -> None:
    sent = Machine(12.5, 8, 0.5, 1 << 34, 1 << 33)
    assert Machine.from_dict(sent.as_dict()) == sent
    assert Machine.from_dict(None) is None  # an older agent says nothing
    odd = Machine.from_dict({"cpu_percent": "high", "cpus": True, "load1": 2})
    assert odd == Machine(None, None, 2.0, None, None)


class _Node:
    """What a sample reads of a node."""

    def __init__(self, name: str, gpus: list[Gpu], machine: Machine | None) -> None:
        self.name, self._gpus, self._machine = name, gpus, machine

    def view(self) -> NodeView:
        return NodeView(self.name, "open", "open", self._machine is not None)

    def gpus(self) -> list[Gpu]:
        return self._gpus

    def machine(self) -> Machine | None:
        return self._machine


def _watch(hub: Hub) -> ClusterWatch:
    gpu = Gpu("here", 0, "RTX", 24 << 30, 6 << 30, None, None, 40, 61, 120.5, True)
    nodes: dict[str, Any] = {
        "here": _Node("here", [gpu], Machine(25.0, 16, 1.5, 64 << 30, 40 << 30)),
        "away": _Node("away", [], None),  # unreachable: nothing known of it
    }
    return ClusterWatch(lambda: cast(Any, None), nodes, cast(Any, None), hub)


def test_a_sample_is_published_only_while_someone_subscribes_to_it() -> None:
    async def scenario() -> None:
        assert "sample" in KINDS
        hub = Hub()
        seen: list[Any] = []
        hub.listen(seen.append, ("instance", "config"))  # as the gateway's store listens
        watch = _watch(hub)
        others = hub.subscribe(("instance", "node", "request"))
        watch.publish_sample()
        assert not hub.wants("sample") and seen == [] and await others.next(0.01) is None

        sub = hub.subscribe(("sample",))
        watch.publish_sample()
        event = await sub.next(1)
        assert event is not None and event.kind == "sample"
        assert seen == [] and await others.next(0.01) is None  # the store keeps none
        here, away = event.as_dict()["nodes"]
        assert here == {
            "name": "here",
            "reachable": True,
            "machine": {"cpu_percent": 25.0, "cpus": 16, "load1": 1.5,
                        "memory_total": 64 << 30, "memory_available": 40 << 30},
            "gpus": [{"index": 0, "memory_used": 6 << 30, "memory_total": 24 << 30,
                      "utilization": 40, "temperature": 61, "power": 120.5}],
        }  # fmt: skip
        assert away["reachable"] is False and away["gpus"] == []
        assert away["machine"] == Machine().as_dict()

        sub.close()
        watch.publish_sample()
        assert not hub.wants("sample") and hub.subscribers == 1

        every = hub.subscribe()  # all kinds: samples too
        watch.publish_sample()
        got = await every.next(1)
        assert got is not None and got.kind == "sample"

    asyncio.run(scenario())


def test_a_sample_is_not_built_without_a_subscriber() -> None:
    class Counting(_Node):
        calls = 0

        def gpus(self) -> list[Gpu]:
            Counting.calls += 1
            return []

    hub = Hub()
    watch = ClusterWatch(lambda: cast(Any, None), {"n": Counting("n", [], None)},
                         cast(Any, None), hub)  # fmt: skip
    watch.publish_sample()
    assert Counting.calls == 0
    assert sample_of(Counting("n", [], None))["gpus"] == [] and Counting.calls == 1
