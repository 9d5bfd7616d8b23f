"""Admission end to end: slots and bounded queues on a real llama-server, exact counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, gemma_model, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def one_slot(serve, gemma: Path, tmp_path: Path) -> Gateway:  # type: ignore[no-untyped-def]
    return serve(write_config(tmp_path, gemma_model("q", gemma, parallel=1, queue=2)))  # type: ignore[no-any-return]


def post(gw: Gateway, max_tokens: int = 8) -> httpx.Response:
    body = {
        "model": "q",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": max_tokens,
    }
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=300)


def test_waiting_for_a_cold_start_is_a_bounded_queue(one_slot: Gateway) -> None:
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(one_slot), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 200, 503, 503, 503]  # 1 slot + a queue of 2, while loading
    refused = [a for a in answers if a.status_code == 503]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert "already wait" in refused[0].json()["error"]["message"]
    audit = one_slot.model("q")
    assert (audit["in_flight"], audit["waiting"], audit["slots"]) == (0, 0, 1)


def test_full_queue_answers_429_and_every_slot_comes_back(one_slot: Gateway) -> None:
    assert post(one_slot).status_code == 200  # loaded
    body = {
        "model": "q",
        "stream": True,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Count from one to one hundred."}],
    }
    with httpx.stream(
        "POST", one_slot.url + "/v1/chat/completions", json=body, timeout=300
    ) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the slot is taken now
        with ThreadPoolExecutor(4) as pool:
            waiting = [pool.submit(post, one_slot) for _ in range(4)]
            for _ in lines:  # let the stream run to its end while they queue
                pass
            answers = [w.result() for w in waiting]
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 429, 429], [a.text for a in answers]  # the slot busy, a queue of 2
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
    audit = one_slot.model("q")
    assert (audit["in_flight"], audit["waiting"]) == (0, 0)
