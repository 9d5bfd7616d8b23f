"""Admission end to end: slots and bounded queues on a real llama-server, exact counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ServedGateway, gemma_model, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def one_slot(serve, gemma: Path, tmp_path: Path) -> ServedGateway:  # type: ignore[no-untyped-def]
    return serve(write_config(tmp_path, gemma_model("q", gemma, parallel=1, queue=2)))  # type: ignore[no-any-return]


def post(gw: ServedGateway, max_tokens: int = 8) -> httpx.Response:
    body = {
        "model": "q",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": max_tokens,
    }
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=300)


def test_waiting_for_a_cold_start_is_a_bounded_queue(one_slot: ServedGateway) -> None:
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(one_slot), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 200, 503, 503, 503]  # 1 slot + a queue of 2, while loading
    refused = [a for a in answers if a.status_code == 503]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert "already wait" in refused[0].json()["error"]["message"]
    audit = one_slot.model("q")
    assert (audit["in_flight"], audit["waiting"], audit["slots"]) == (0, 0, 1)


def test_full_queue_answers_429_and_every_slot_comes_back(one_slot: ServedGateway) -> None:
    assert post(one_slot).status_code == 200  # loaded
    body = {
        "model": "q",
        "stream": True,
        # Long enough to hold the slot while four requests arrive; short enough to end soon
        # on a machine whose cores other work shares (256 tokens once took over 300 s).
        "max_tokens": 96,
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


def engine_busy(gw: ServedGateway) -> bool:
    """Is any slot of q's llama-server generating? (its own /slots endpoint)"""
    base = str(gw.model("q")["upstream"]).removesuffix("/v1")
    return any(slot["is_processing"] for slot in httpx.get(base + "/slots", timeout=10).json())


def wait_until(check, timeout: float = 30, show=None) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached in time: {show() if show else ''}"
        # Not faster: llama-server polled on /slots many times a second was seen to miss a
        # closed connection until the polling stopped.
        time.sleep(1.0)


def test_a_client_that_goes_away_frees_its_slot_and_stops_the_engine(
    one_slot: ServedGateway,
) -> None:
    assert post(one_slot).status_code == 200  # loaded
    long = {
        "model": "q",
        "max_tokens": 700,
        "messages": [{"role": "user", "content": "Write a very long story."}],
    }
    # Non-streamed, mid-generation: the client gives up after a moment.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(one_slot.url + "/v1/chat/completions", json=long, timeout=1.5)
    wait_until(
        lambda: not engine_busy(one_slot) and one_slot.model("q")["in_flight"] == 0,
        show=lambda: (engine_busy(one_slot), one_slot.model("q")),
    )

    # Streamed, mid-generation.
    with httpx.stream(
        "POST", one_slot.url + "/v1/chat/completions", json={**long, "stream": True}, timeout=60
    ) as stream:
        lines = stream.iter_lines()  # kept: a dropped iterator closes the response
        next(line for line in lines if '"content":"' in line)  # generating now
        assert engine_busy(one_slot)
    wait_until(lambda: not engine_busy(one_slot) and one_slot.model("q")["in_flight"] == 0)

    # Queued behind a busy slot: leaving gives its place back, the running one goes on.
    with httpx.stream(
        "POST",
        one_slot.url + "/v1/chat/completions",
        json={**long, "max_tokens": 200, "stream": True},
        timeout=120,
    ) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        with pytest.raises(httpx.ReadTimeout):
            post_with_timeout(one_slot, 1.0)
        wait_until(lambda: one_slot.model("q")["waiting"] == 0)
        assert one_slot.model("q")["in_flight"] == 1
        assert any('"finish_reason":"length"' in line for line in lines)
    assert one_slot.model("q")["in_flight"] == 0


def post_with_timeout(gw: ServedGateway, timeout: float) -> httpx.Response:
    body = {"model": "q", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=timeout)


def test_a_waiting_stream_is_kept_alive_then_answered(one_slot: ServedGateway) -> None:
    """Queued behind a busy slot, a streamed request gets its 200 and comment lines at once,
    then the answer once the first client leaves; the SDK reads through the comments."""
    assert post(one_slot).status_code == 200
    busy = {
        "model": "q",
        "stream": True,
        # Far longer than the second waits before its first comment (a second), on any
        # machine (within q's window of 1024): the test ends it by leaving, not by waiting.
        "max_tokens": 600,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "Count to one hundred."}],
    }
    waiting = {"model": "q", "stream": True, "max_tokens": 4,
               "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    url = one_slot.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=busy, timeout=120) as first:
        lines = first.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        with httpx.stream("POST", url, json=waiting, timeout=120) as second:
            assert second.status_code == 200
            assert "x-modelyard-decision" in second.headers
            seen = second.iter_lines()
            assert next(seen).startswith(": modelyard: waiting")  # before the slot is free
            first.close()  # the first client leaves: its slot frees, the second proceeds
            rest = list(seen)
    assert any(line.startswith("data: ") and '"content"' in line for line in rest)
    assert rest[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in rest
    client = openai.OpenAI(base_url=one_slot.url + "/v1", api_key="none", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="q", stream=True, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
        )
    )
    assert chunks and one_slot.model("q")["in_flight"] == 0


def test_context_window_warns_then_refuses(one_slot: ServedGateway) -> None:
    """q's window is 1024 tokens: over 60% warns in a header, over 75% is a 400."""

    def ask(chars: int, max_tokens: int) -> httpx.Response:
        body = {
            "model": "q",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "word " * (chars // 5)}],
        }
        return httpx.post(one_slot.url + "/v1/chat/completions", json=body, timeout=120)

    fine = ask(100, 8)
    assert fine.status_code == 200 and "x-modelyard-context-warning" not in fine.headers
    warned = ask(1500, 150)  # about 654 of 1024 tokens
    assert warned.status_code == 200
    assert "64% of the window of q" in warned.headers["x-modelyard-context-warning"]
    refused = ask(1500, 400)
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "1024-token window" in error["message"]


def test_shutdown_lets_a_running_stream_finish(one_slot: ServedGateway) -> None:
    import signal

    assert post(one_slot).status_code == 200
    body = {
        "model": "q",
        "stream": True,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": "Count to one hundred."}],
    }
    with httpx.stream(
        "POST", one_slot.url + "/v1/chat/completions", json=body, timeout=120
    ) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if '"content":"' in line)
        one_slot.proc.send_signal(signal.SIGTERM)  # mid-answer
        rest = list(lines)
    assert "data: [DONE]" in rest
    assert any('"finish_reason":"length"' in line for line in rest)
    assert one_slot.proc.wait(60) in (0, -15)  # uvicorn re-raises the signal once done


def test_reload_applies_a_valid_config_and_keeps_a_running_stream(
    serve,
    gemma: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    import signal
    import time

    config = write_config(tmp_path, gemma_model("keep", gemma) + gemma_model("gone", gemma))
    gw = serve(config)
    original = config.read_text()

    config.write_text(original.replace("engine: llama.cpp", "engine: llama.cpp\n    ttl: soon", 1))
    bad = gw.cli("reload")
    assert bad.returncode == 1 and "did not validate" in bad.stderr and "ttl" in bad.stderr
    assert {m["name"] for m in gw.admin("GET", "/admin/models").json()["models"]} == {
        "keep",
        "gone",
    }

    body = {
        "model": "keep",
        "stream": True,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": "Count to one hundred."}],
    }
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=120) as s:
        lines = s.iter_lines()
        next(line for line in lines if '"content":"' in line)
        changed = original.replace("  gone:", "  added:")
        config.write_text(changed)
        done = gw.cli("reload")
        assert done.returncode == 0, done.stderr
        assert "added ['added']" in done.stdout and "removed ['gone']" in done.stdout
        rest = list(lines)  # the stream on the unchanged model went on to its end
    assert "data: [DONE]" in rest
    assert {m["name"] for m in gw.admin("GET", "/admin/models").json()["models"]} == {
        "keep",
        "added",
    }

    config.write_text(changed.replace("listen: 127.0.0.1:", "listen: 127.0.0.2:"))
    refused = gw.cli("reload")
    assert refused.returncode == 1 and "restart the gateway" in refused.stderr

    config.write_text(changed.replace("  added:", "  again:"))
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "again" not in {m["name"] for m in gw.admin("GET", "/admin/models").json()["models"]}:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.2)
