"""The GPU lease: who goes next (a table) and the line itself (asyncio, no processes)."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.config import parse_config
from modelyard.errors import Refused
from modelyard.gpu_lease import Ask, GpuLeases, grantable


def ask(i: int, model: str, *leases: str) -> Ask:
    return Ask(i, model, leases or ("gpu",))


@pytest.mark.parametrize(
    ("waiting", "holders", "go"),
    [
        ([ask(1, "llm")], {}, [1]),  # free
        ([ask(1, "llm")], {"gpu": "llm"}, [1]),  # held by its own model: shared
        ([ask(1, "tts")], {"gpu": "llm"}, []),  # held by another: waits
        ([ask(1, "tts"), ask(2, "llm")], {"gpu": "llm"}, []),  # no overtaking a waiter
        ([ask(1, "llm"), ask(2, "llm"), ask(3, "tts")], {}, [1, 2]),  # first model's run
        ([ask(1, "tts"), ask(2, "llm", "other")], {"gpu": "llm"}, [2]),  # other lease: goes
        ([ask(1, "a", "x", "y")], {"y": "b"}, []),  # needs both at once
        ([ask(1, "a", "x", "y"), ask(2, "c", "x")], {"y": "b"}, []),  # x waited for by 1
        ([ask(1, "a", "x", "y"), ask(2, "c", "z")], {"y": "b"}, [2]),
        ([], {"gpu": "llm"}, []),
    ],
)
def test_who_goes_next(waiting: list[Ask], holders: dict[str, str], go: list[int]) -> None:
    assert grantable(waiting, holders) == go


async def test_requests_of_one_model_share_and_another_waits_in_order() -> None:
    leases = GpuLeases()
    waits: list[tuple[str, float]] = []
    leases.on_wait = lambda lease, s: waits.append((lease, s))
    a1 = await leases.take("llm", ("gpu",), None)
    a2 = await leases.take("llm", ("gpu",), None)  # the same model: at once
    order: list[str] = []

    async def later(model: str) -> None:
        hold = await leases.take(model, ("gpu",), 5)
        order.append(model)
        await asyncio.sleep(0.01)
        leases.release(hold)

    tts = asyncio.create_task(later("tts"))
    await asyncio.sleep(0)
    llm3 = asyncio.create_task(later("llm"))  # behind tts though llm holds the lease
    await asyncio.sleep(0.01)
    assert order == [] and [v["waiting"] for v in leases.view(0)] == [["tts", "llm"]]
    leases.release(a1)
    await asyncio.sleep(0)
    assert order == []  # a2 still holds it
    leases.release(a2)
    leases.release(a2)  # twice: nothing more
    await asyncio.gather(tts, llm3)
    assert order == ["tts", "llm"]
    assert leases.view(0) == []
    assert [lease for lease, _ in waits] == ["gpu"] * 4 and max(s for _, s in waits) > 0


async def test_a_wait_past_its_time_is_refused_and_leaves_the_line() -> None:
    leases = GpuLeases()
    held = await leases.take("llm", ("gpu",), None)
    with pytest.raises(Refused) as refused:
        await leases.take("tts", ("gpu",), 0.05)
    assert refused.value.timed_out and "held by llm" in refused.value.reason
    assert leases.view(0)[0]["waiting"] == []
    leases.release(held)
    assert await leases.take("tts", ("gpu",), 0.05) is not None


async def test_a_cancelled_waiter_lets_those_behind_it_go() -> None:
    leases = GpuLeases()
    held = await leases.take("llm", ("gpu", "b"), None)
    first = asyncio.create_task(leases.take("tts", ("gpu",), None))
    await asyncio.sleep(0)
    second = asyncio.create_task(leases.take("asr", ("c",), None))  # not blocked
    third = asyncio.create_task(leases.take("llm", ("b",), None))  # llm holds b: shares it
    await asyncio.sleep(0)
    assert second.done() and third.done()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    leases.release(held)
    leases.release(second.result())
    leases.release(third.result())
    assert leases.view(0) == []


async def test_a_grant_that_lands_with_a_cancel_goes_back() -> None:
    leases = GpuLeases()
    held = await leases.take("llm", ("gpu",), None)
    waiter = asyncio.create_task(leases.take("tts", ("gpu",), None))
    await asyncio.sleep(0)
    leases.release(held)  # grants the waiter in this turn ...
    waiter.cancel()  # ... and the waiter is cancelled in the same one
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert leases.view(0) == []  # its grant was handed back
    assert await leases.take("other", ("gpu",), 0.01) is not None


async def test_the_audit_hands_back_a_hold_whose_request_ended() -> None:
    leases = GpuLeases()

    async def leaky() -> None:
        await leases.take("llm", ("gpu",), None)  # never released

    await asyncio.create_task(leaky())
    loop = asyncio.get_running_loop()
    assert leases.audit(loop.time()) == 0  # not a second old yet
    assert leases.audit(loop.time() + 2) == 1 and leases.leaks == 1
    assert leases.view(0) == []


def test_no_leases_take_nothing() -> None:
    assert asyncio.run(GpuLeases().take("llm", (), None)) is None


CONFIG = """\
nodes:
  server:
    gpus: [{index: 0, memory: 8GiB}, {index: 1, memory: 8GiB}]
    serial_gpus: [0]
models:
  llm: {engine: command, command: [x, "{port}"], gpus: [0]}
  tts: {engine: command, command: [x, "{port}"], gpus: [0, 1]}
  big: {engine: command, command: [x, "{port}"]}
  cpu: {engine: command, command: [x, "{port}"], gpus: []}
  other: {engine: command, command: [x, "{port}"], gpus: [1]}
  named: {engine: command, command: [x, "{port}"], gpus: [1], serial: speech-box}
"""


def test_the_leases_each_model_takes() -> None:
    config = parse_config(CONFIG, "modelyard.yaml", {})
    leases = {name: config.leases_of(name) for name in config.models}
    assert leases == {
        "llm": ("server/gpu0",),
        "tts": ("server/gpu0",),
        "big": ("server/gpu0",),  # gpus unset: it may use every GPU of its node
        "cpu": (),
        "other": (),
        "named": ("speech-box",),
    }


def test_a_serial_gpu_must_be_declared() -> None:
    from modelyard.config import ConfigError

    with pytest.raises(ConfigError, match="serial_gpus names GPU 3"):
        parse_config(CONFIG.replace("serial_gpus: [0]", "serial_gpus: [3]"), "m.yaml", {})
