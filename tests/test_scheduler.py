"""The scheduler's shell around decide, driven without engines: what acquire hands out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import load_config
from modelyard.engines import Upstream
from modelyard.gateway.state import Gateway
from modelyard.schedule import Grant, State
from modelyard.scheduler import Refused


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
    inst.state, inst.upstream, inst.in_flight = State.READY, Upstream("http://127.0.0.1:9/v1"), 1
    apply = sched._apply

    def grant_then_exit(action: Any, now: float) -> None:
        apply(action, now)
        if isinstance(action, Grant):  # the exit lands before the granted request resumes
            sched.on_exit("m", "killed")

    sched._apply = grant_then_exit  # type: ignore[method-assign]

    async def scenario() -> None:
        sched.start_loop()
        waiting = asyncio.ensure_future(sched.acquire("m"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and sched.waiting() == {"m": 1}  # the one slot is busy
        sched.release(inst)  # the running request ends: the waiter is granted
        with pytest.raises(Refused, match="m stopped before the request was sent") as refused:
            await asyncio.wait_for(waiting, 5)
        assert refused.value.status == 503
        assert (inst.state, inst.in_flight, sched.waiting()) == (State.FAILED, 0, {})
        await sched.close()

    asyncio.run(scenario())
    gw.store.db.close()
