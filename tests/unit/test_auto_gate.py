"""The gate that closes by itself, table by table (modelyard.auto_gate)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelyard.auto_gate import AutoGate, Reading, read, running_names, why
from modelyard.config.node_spec import AutoMode, Node
from modelyard.gpus import GpuProcess, read_gpus_file

GIB = 1024**3
AUTO = AutoMode(mode="gaming", other_gpu_memory=2 * GIB, processes=["steam"], leave_after=10)


@pytest.mark.parametrize(
    ("reading", "said"),
    [
        (Reading({}), None),
        (Reading({0: 2 * GIB}), None),  # at the limit: not over it
        (Reading({0: GIB, 1: 3 * GIB}), "programs other than modelyard's use 3 GiB of GPU 1"),
        (Reading({}, ("steam",)), "steam is running"),
    ],
)
def test_why(reading: Reading, said: str | None) -> None:
    got = why(AUTO, reading)
    assert (got is None) if said is None else (got is not None and got.startswith(said)), got


def test_enters_from_the_first_mode_and_leaves_after_a_quiet_while() -> None:
    gate = AutoGate("normal")
    assert gate.step(AUTO, "normal", None, 0) is None
    assert gate.step(AUTO, "normal", "steam is running", 1) == ("gaming", "auto: steam is running")
    assert gate.step(AUTO, "gaming", "steam is running", 5) is None  # still there
    assert gate.step(AUTO, "gaming", None, 14) is None  # 9 s quiet: not yet
    left = gate.step(AUTO, "gaming", None, 15.5)
    assert left is not None and left[0] == "normal" and "gone for 10s" in left[1]
    assert "steam is running" in left[1]
    assert gate.step(AUTO, "normal", None, 16) is None


@pytest.mark.parametrize("by_hand", ["gaming", "drained"])
def test_a_person_s_mode_wins(by_hand: str) -> None:
    gate = AutoGate("normal")
    assert gate.step(AUTO, "normal", "steam is running", 0) is not None
    gate.set_by_hand(by_hand)  # a person chose: the gate leaves it alone, whatever holds
    assert gate.step(AUTO, by_hand, None, 100) is None
    assert gate.step(AUTO, by_hand, "steam is running", 101) is None
    gate.set_by_hand("normal")  # back in the first mode by hand: the gate watches again
    assert gate.step(AUTO, "normal", "steam is running", 102) == (
        "gaming",
        "auto: steam is running",
    )


def test_a_node_found_in_another_mode_after_a_restart_is_left_as_it_is() -> None:
    gate = AutoGate("normal", manual=True)
    assert gate.step(AUTO, "gaming", None, 1000) is None


def test_the_reading_leaves_out_modelyard_s_own_processes(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        procs = [GpuProcess(os.getpid(), 0, 5 * GIB), GpuProcess(child.pid, 0, 3 * GIB),
                 GpuProcess(child.pid, 1, GIB), GpuProcess(999_999_999, 1, GIB)]  # fmt: skip
        reading = read(AUTO.model_copy(update={"processes": []}), procs, {os.getpgid(0)})
        # ours: this process's group (the child shares it); the gone pid counts as other
        assert reading.other_memory == {1: GIB} and reading.running == ()
    finally:
        child.kill()
        child.wait()


def test_a_named_process_is_found_by_its_name_and_one_never_running_is_harmless() -> None:
    name = "modelyard-gate-t"
    proc = subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 30"])
    try:
        deadline = time.monotonic() + 5
        while name not in running_names([name]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert running_names(["no-such-program-*"]) == ()
    finally:
        proc.kill()
        proc.wait()


def test_a_gpus_file_and_what_is_wrong_with_it(tmp_path: Path) -> None:
    file = tmp_path / "gpus.json"
    assert read_gpus_file("n", file) == ([], [])  # not written yet: nothing, no error
    gpu = '{"index": 0, "name": "RX 7900", "memory": 100, "used": 40}'
    game = '{"pid": 7, "gpu": 0, "used": 30, "name": "game"}'
    file.write_text(f'{{"gpus": [{gpu}], "processes": [{game}]}}')
    gpus, procs = read_gpus_file("n", file)
    assert (gpus[0].total, gpus[0].used, gpus[0].measured) == (100, 40, True)
    assert procs == [GpuProcess(7, 0, 30, "game")]
    file.write_text("{not json")
    assert read_gpus_file("n", file) == ([], [])


@pytest.mark.parametrize(
    ("auto", "says"),
    [
        ({"mode": "normal", "processes": ["x"]}, "gated or drained modes: gaming"),
        ({"mode": "nope", "processes": ["x"]}, "gated or drained"),
        ({"mode": "gaming"}, "needs other_gpu_memory, processes, or both"),
    ],
)
def test_the_auto_mode_must_be_a_closed_mode_with_a_condition(auto: dict, says: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=says):
        Node(modes={"normal": "open", "gaming": "gated"}, auto_mode=auto)  # type: ignore[arg-type]
