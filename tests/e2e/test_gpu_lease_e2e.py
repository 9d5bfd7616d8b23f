"""The GPU lease end to end: a chat model (tests/slow_upstream.py, streaming slowly) and the
real speech worker declared on one serial GPU never work at once, by their own timings
(the stub's record of each request, the worker's "busy FROM to TO" log line); a chat model
on another GPU works beside the speech. Shown in /admin/status and /metrics."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServedGateway, free_port, gateways, stub_log, stub_model

pytest.importorskip("hibari")

pytestmark = pytest.mark.e2e

SENTENCE = "The lease keeps the speech and the chat apart on one card."
SLOW = {"chunks": 6, "gap": 0.15}  # a chat generating for about a second


def config(tmp: Path) -> Path:
    path = tmp / "modelyard.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp / 'state'}\n"
        "nodes:\n"
        "  local:\n"
        "    gpus: [{index: 0, name: Small, memory: 8GiB}, {index: 1, name: Other, memory: 8GiB}]\n"
        "    serial_gpus: [0]\n"
        "models:\n"
        + stub_model("chat", gpus="[0]", memory="1GiB", slots=4)
        + stub_model("elsewhere", gpus="[1]", memory="1GiB", slots=4)
        + "  voice: {engine: speech, tts: hibari, gpus: [0], memory: 1GiB, start_timeout: 120s}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("lease")
    with gateways(tmp) as start:
        served = start(config(tmp))
        for name in ("chat", "elsewhere", "voice"):  # started before the storm
            assert served.admin("POST", f"/admin/models/{name}/start").status_code == 200
        yield served


def chat(gw: ServedGateway, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stub": SLOW}  # fmt: skip
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        r.read()


def speak(gw: ServedGateway) -> None:
    body = {"model": "voice", "voice": "heart", "input": SENTENCE, "response_format": "pcm"}
    r = httpx.post(gw.url + "/v1/audio/speech", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.content) > 24000  # over half a second of audio


def storm(jobs: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # reported below, all of them
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
        time.sleep(0.05)  # arrivals interleaved: chat, speech, chat, speech, ...
    for t in threads:
        t.join(180)
    assert not errors, errors


def busy(gw: ServedGateway, since: float) -> tuple[list[tuple[float, float]], list[Any]]:
    """The speech worker's syntheses and the chat stub's requests since ``since``."""
    lines = gw.admin("GET", "/admin/models/voice/logs", params={"lines": 500}).text
    speech = [
        (float(a), float(b))
        for a, b in re.findall(r"speech: \d+ characters, busy ([\d.]+) to ([\d.]+)", lines)
        if float(a) >= since
    ]
    return speech, [r for r in stub_log(gw, "chat")["requests"] if r["began"] >= since]


def overlaps(a: tuple[float, float], b: tuple[float, float], slack: float = 0.0) -> bool:
    return a[0] < b[1] - slack and b[0] < a[1] - slack


def test_speech_and_chat_on_a_serial_gpu_take_turns(gw: ServedGateway) -> None:
    since = time.time()
    talk, say = (lambda: chat(gw, "chat")), (lambda: speak(gw))
    # Interleaved, then in runs: first come, first served, and a run of one model's
    # requests shares the lease.
    storm([talk, say, talk, say, talk, talk, say, say, talk, talk])
    speech, chats = busy(gw, since)
    assert len(speech) == 4 and len(chats) == 6, (speech, chats)
    spans = sorted((c["began"], c["ended"]) for c in chats)
    # The worker logs its times to the millisecond (rounded): a turn that began as the other
    # ended may read up to half of one earlier, and two clocks' reads lie between.
    clashes = [(s, c) for s in speech for c in spans if overlaps(s, c, slack=0.002)]
    assert not clashes, f"speech and chat at once on a serial GPU: {clashes}"
    assert any(overlaps(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :]), spans

    metrics = gw.admin("GET", "/metrics").text
    count = re.search(
        r'modelyard_gpu_lease_wait_seconds_count\{lease="local/gpu0"\} (\S+)', metrics
    )
    total = re.search(r'modelyard_gpu_lease_wait_seconds_sum\{lease="local/gpu0"\} (\S+)', metrics)
    assert count and float(count.group(1)) >= 10, metrics
    assert total and float(total.group(1)) > 0.1  # someone waited for their turn
    assert 'modelyard_gpu_lease_waiting{lease="local/gpu0"} 0.0' in metrics


def test_on_another_gpu_they_work_at_once(gw: ServedGateway) -> None:
    since = time.time()
    storm([lambda: chat(gw, "elsewhere"), lambda: speak(gw)] * 3)
    speech, _ = busy(gw, since)
    others = [
        (r["began"], r["ended"])
        for r in stub_log(gw, "elsewhere")["requests"]
        if r["began"] >= since
    ]
    assert len(speech) == 3 and len(others) == 3
    assert any(overlaps(s, c) for s in speech for c in others), (speech, others)


def test_the_status_shows_who_holds_and_who_waits(gw: ServedGateway) -> None:
    long_chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                 "stream": True, "stub": {"chunks": 20, "gap": 0.3}}  # fmt: skip
    seen: list[dict[str, Any]] = []

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(s["waiting"] for s in seen):
            seen.extend(gw.admin("GET", "/admin/status").json()["gpu_leases"])
            time.sleep(0.05)

    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=long_chat, timeout=60) as r:
        assert r.status_code == 200
        speaking = threading.Thread(target=speak, args=(gw,))
        speaking.start()
        watch()
        top = gw.cli("top", "--once")  # while the speech waits: the leases' table
        r.read()
    speaking.join(60)
    held = [s for s in seen if s["waiting"]]
    assert held, seen
    assert held[0]["lease"] == "local/gpu0" and held[0]["holder"] == "chat"
    assert held[0]["waiting"] == ["voice"] and held[0]["longest_wait_s"] >= 0
    assert gw.admin("GET", "/admin/status").json()["gpu_leases"] == []
    assert top.returncode == 0, top.stderr
    assert "GPU leases" in top.stdout, top.stdout
    line = next(x for x in top.stdout.splitlines() if x.startswith("local/gpu0"))
    assert "chat" in line and "voice" in line, top.stdout
