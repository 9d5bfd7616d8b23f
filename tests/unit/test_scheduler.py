"""The scheduler's shell around decide, driven without engines: what acquire hands out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import load_config
from modelyard.engines.base import Upstream
from modelyard.errors import Refused
from modelyard.gateway.state import Gateway
from modelyard.lifecycle import Grant, State


def test_a_grant_whose_server_exits_before_the_request_runs_is_refused(tmp_path: Path) -> None:
    """Granted by the loop, then the engine's exit is seen before the waiting request
    resumes: the request is refused (and may go to another candidate), its place returned,
    rather than handed an instance with no server."""
    config = tmp_path / "m.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "models:\n  m:\n    engine: command\n    command: [/bin/false, '{port}']\n    slots: 1\n"
    )
    gw = Gateway(load_config(config))
    sched = gw.scheduler
    inst = sched.instances["m"]
    inst.state, inst.upstream = State.READY, Upstream("http://127.0.0.1:9/v1")
    apply = sched._apply

    def grant_then_exit(action: Any, now: float) -> None:
        apply(action, now)
        if isinstance(action, Grant):  # the exit lands before the granted request resumes
            sched.on_exit("m", "killed")

    sched._apply = grant_then_exit  # type: ignore[method-assign]

    async def scenario() -> None:
        sched.start_loop()
        running = await sched.acquire("m")  # the one slot
        waiting = asyncio.ensure_future(sched.acquire("m"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and sched.waiting() == {"m": 1}  # the one slot is busy
        sched.release(running)  # the running request ends: the waiter is granted
        with pytest.raises(Refused, match="m stopped before the request was sent") as refused:
            await asyncio.wait_for(waiting, 5)
        assert refused.value.status == 503
        assert (inst.state, inst.in_flight, sched.waiting()) == (State.FAILED, 0, {})
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def _one_slot(tmp_path: Path) -> Gateway:
    """A gateway whose model ``m`` is ready on one slot, with no engine behind it."""
    config = tmp_path / "m.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "models:\n  m:\n    engine: command\n    command: [/bin/false, '{port}']\n    slots: 1\n"
    )
    gw = Gateway(load_config(config))
    inst = gw.scheduler.instances["m"]
    inst.state, inst.upstream = State.READY, Upstream("http://127.0.0.1:9/v1")
    return gw


def _in_same_turn_as_grant(sched: Any, act: Any) -> None:
    """Make ``act()`` run in the very turn of the loop that grants a waiter its place."""
    apply = sched._apply

    def grant_and_act(action: Any, now: float) -> None:
        apply(action, now)
        if isinstance(action, Grant):
            act()

    sched._apply = grant_and_act


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_cancel_in_the_same_turn_as_the_grant_wins_and_the_place_comes_back(
    tmp_path: Path, timeout: float | None
) -> None:
    """The grant and the client's leave land together: the request is cancelled (it does
    not go on to generate for nobody) and its place is back, whatever the wait's timeout.
    Python 3.11's wait_for returned the grant and dropped the cancel here."""
    gw = _one_slot(tmp_path)
    sched, inst = gw.scheduler, gw.scheduler.instances["m"]
    waiting: asyncio.Task[Any] | None = None

    def leave() -> None:
        assert waiting is not None
        waiting.cancel()

    _in_same_turn_as_grant(sched, leave)

    async def scenario() -> None:
        nonlocal waiting
        sched.start_loop()
        running = await sched.acquire("m")
        waiting = asyncio.ensure_future(sched.acquire("m", timeout=timeout))
        await asyncio.sleep(0.05)
        sched.release(running)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.01)
        assert (inst.in_flight, inst.leases, sched.waiting()) == (0, set(), {})
        assert sched.audit() == {"leaks_found": [], "leaks_total": 0}
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def test_a_timeout_in_the_same_turn_as_the_grant_refuses_and_returns_the_place(
    tmp_path: Path,
) -> None:
    gw = _one_slot(tmp_path)
    sched, inst = gw.scheduler, gw.scheduler.instances["m"]

    async def scenario() -> None:
        sched.start_loop()
        running = await sched.acquire("m")
        waiting = asyncio.ensure_future(sched.acquire("m", timeout=0.2))
        await asyncio.sleep(0.05)
        # The release is timed to land with the timeout: whichever wins, nothing is kept.
        asyncio.get_running_loop().call_later(0.15, sched.release, running)
        try:
            lease = await waiting
        except Refused as exc:
            assert exc.timed_out
        else:
            sched.release(lease)
        await asyncio.sleep(0.01)
        assert (inst.in_flight, inst.leases, sched.waiting()) == (0, set(), {})
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def test_a_place_is_returned_once_however_often_it_is_released(tmp_path: Path) -> None:
    gw = _one_slot(tmp_path)
    sched, inst = gw.scheduler, gw.scheduler.instances["m"]

    async def scenario() -> None:
        first = await sched.acquire("m")
        second = asyncio.ensure_future(sched.acquire("m"))
        sched.start_loop()
        for _ in range(3):
            sched.release(first)  # a stream closed three ways still frees one place
        lease = await asyncio.wait_for(second, 5)
        assert inst.in_flight == 1 and inst.leases == {lease}
        sched.release(lease)
        assert inst.in_flight == 0
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def test_the_audit_finds_a_place_held_by_a_finished_request_and_returns_it(
    tmp_path: Path,
) -> None:
    """The invariant check: a place whose request's task has ended is a leak; the audit
    counts it (``/admin/status``, ``/metrics``), logs it and hands the place back."""
    gw = _one_slot(tmp_path)
    sched, inst = gw.scheduler, gw.scheduler.instances["m"]

    async def scenario() -> None:
        async def forgetful() -> None:
            await sched.acquire("m")  # and never released

        await asyncio.ensure_future(forgetful())
        assert inst.in_flight == 1
        assert sched.audit()["leaks_found"] == []  # first seen: it may be handed back soon
        for lease in inst.leases:
            lease.orphaned = (lease.orphaned or 0) - 2  # two seconds later
        report = sched.audit()
        assert report["leaks_found"] == ["m"] and report["leaks_total"] == 1
        assert inst.in_flight == 0 and sched.leaks == {"m": 1}
        assert any(e["event"] == "leak" for e in sched.store.events(limit=5))
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def test_the_model_served_after_a_reload_runs_with_the_new_settings(tmp_path: Path) -> None:
    """The reload window: a request arrives while a changed model drains its last answer.
    Whatever serves it after the reload must be started from the new config, never the old.
    (Seen before: gemma-a#2 started with the old --ctx-size and stayed so until a restart.)"""
    model = "models:\n  m:\n    engine: command\n    command: [/bin/false, '{port}']\n"
    config = tmp_path / "m.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n{model}    description: old\n")
    gw = Gateway(load_config(config))
    sched, node = gw.scheduler, gw.nodes["local"]
    started_with: list[str] = []

    async def start(name: str, timeout: float) -> tuple[Upstream, int | None]:
        started_with.append(node.config.models[name].description)  # what the engine is made of
        await asyncio.sleep(0.01)
        return Upstream("http://127.0.0.1:9/v1"), None

    async def stop(name: str, reason: str) -> None:
        await asyncio.sleep(0.01)

    node.start, node.stop = start, stop  # type: ignore[method-assign]

    async def scenario() -> None:
        sched.start_loop()
        running = await sched.acquire("m")  # a long answer on the old settings
        config.write_text(f"state_dir: {tmp_path / 'state'}\n{model}    description: new\n")
        reload = asyncio.ensure_future(gw.reload(load_config(config)))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(sched.acquire("m"))  # comes in while it drains
        await asyncio.sleep(0.05)
        sched.release(running)  # the old answer ends: the model stops and starts again
        served = await asyncio.wait_for(waiting, 5)
        assert await asyncio.wait_for(reload, 5) == {"added": [], "changed": ["m"], "removed": []}
        assert started_with == ["old", "new"]
        sched.release(served)
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def test_a_model_removed_while_it_answers_finishes_then_goes(tmp_path: Path) -> None:
    two = (
        "models:\n  keep:\n    engine: command\n    command: [/bin/false, '{port}']\n"
        "  gone:\n    engine: command\n    command: [/bin/false, '{port}']\n"
    )
    config = tmp_path / "m.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n{two}")
    gw = Gateway(load_config(config))
    sched, node = gw.scheduler, gw.nodes["local"]
    stopped: list[str] = []

    async def start(name: str, timeout: float) -> tuple[Upstream, int | None]:
        return Upstream("http://127.0.0.1:9/v1"), None

    async def stop(name: str, reason: str) -> None:
        stopped.append(name)

    node.start, node.stop = start, stop  # type: ignore[method-assign]

    async def scenario() -> None:
        sched.start_loop()
        answering = await sched.acquire("gone")
        config.write_text(f"state_dir: {tmp_path / 'state'}\n{two.split('  gone:')[0]}")
        reload = asyncio.ensure_future(gw.reload(load_config(config)))
        await asyncio.sleep(0.05)
        assert not reload.done() and stopped == []  # its answer goes on
        assert sched.instances["gone"].state is State.DRAINING
        sched.release(answering)
        assert await asyncio.wait_for(reload, 5) == {
            "added": [],
            "changed": [],
            "removed": ["gone"],
        }
        assert stopped == ["gone"] and "gone" not in sched.instances
        assert "gone" not in sched.rules()
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()


def test_a_stop_returns_when_its_run_ends_though_waiting_requests_start_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests wait while an admin stop drains the model: once it has stopped, the loop
    starts it again for them in the same turn. The stop still returns: its run ended (it
    never sees the state ``stopped``, but the next run's generation)."""
    gw = _one_slot(tmp_path)
    sched, inst = gw.scheduler, gw.scheduler.instances["m"]
    inst.generation = 1

    async def started(*args: Any) -> tuple[Upstream, int]:
        return Upstream("http://127.0.0.1:9/v1"), 42

    async def stopped(*args: Any) -> None:
        pass

    monkeypatch.setattr("modelyard.scheduler.span.start", started)
    monkeypatch.setattr("modelyard.scheduler.span.stop", stopped)

    async def scenario() -> None:
        sched.start_loop()
        running = await sched.acquire("m")
        stopping = asyncio.ensure_future(sched.stop("m"))
        await asyncio.sleep(0.05)
        assert inst.state is State.DRAINING
        waiting = asyncio.ensure_future(sched.acquire("m"))
        await asyncio.sleep(0.05)
        sched.release(running)  # drained: it stops, and starts again for the waiter
        lease = await asyncio.wait_for(waiting, 5)
        await asyncio.wait_for(stopping, 5)
        assert (lease.instance.generation, inst.state) == (2, State.READY)
        sched.release(lease)
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()
