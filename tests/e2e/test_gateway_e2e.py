"""End to end: a real gateway process, real llama-server processes, the official SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ServedGateway, free_port, gemma_model, write_config

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello."}]


def chat(gw: ServedGateway, model: str, **kw: object) -> tuple[str, dict[str, str]]:
    raw = gw.client.chat.completions.with_raw_response.create(
        model=model,
        messages=HELLO,
        max_tokens=8,
        **kw,  # type: ignore[arg-type]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    return completion.model, dict(raw.headers)


@pytest.fixture
def pair(serve, gemma: Path, tmp_path: Path) -> ServedGateway:  # type: ignore[no-untyped-def]
    """gemma-a and gemma-b in one swap group, as in examples/demo.yaml."""
    models = gemma_model("gemma-a", gemma, aliases="[gemma]", swap_group="cpu", ttl="10m")
    models += gemma_model("gemma-b", gemma, swap_group="cpu", ttl="10m")
    return serve(
        write_config(tmp_path, models, "scheduler: {max_swap_delay: 0.5s, drain_timeout: 10m}")
    )


def test_chat_streaming_and_not(pair: ServedGateway) -> None:
    _, headers = chat(pair, "gemma")  # an alias
    assert headers["x-modelyard-model"] == "gemma-a"
    assert headers["x-modelyard-instance"] == "gemma-a#1"

    stream = pair.client.chat.completions.create(
        model="gemma-a", messages=HELLO, max_tokens=12, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert {c.model for c in chunks} == {"gemma-a"}
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason is not None

    completion = pair.client.completions.create(model="gemma-a", prompt="1, 2, 3,", max_tokens=4)
    assert completion.choices[0].text

    cards = {m.id: m for m in pair.client.models.list().data}
    assert set(cards) == {"gemma-a", "gemma-b"}
    assert cards["gemma-a"].model_extra["state"] == "ready"  # type: ignore[index]
    assert cards["gemma-b"].model_extra["state"] == "stopped"  # type: ignore[index]


def test_swap_a_b_a_never_two_up(pair: ServedGateway) -> None:
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(pair.engines()))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _, h1 = chat(pair, "gemma-a")
        _, h2 = chat(pair, "gemma-b")
        assert pair.model("gemma-a")["state"] == "stopped"
        _, h3 = chat(pair, "gemma-a")
        assert pair.model("gemma-b")["state"] == "stopped"
    finally:
        done.set()
        watcher.join()
    assert [h["x-modelyard-instance"] for h in (h1, h2, h3)] == [
        "gemma-a#1",
        "gemma-b#1",
        "gemma-a#2",
    ]
    assert peak == 1, "two members of one swap group ran at the same time"


def test_in_flight_request_finishes_before_eviction(pair: ServedGateway) -> None:
    chat(pair, "gemma-a")
    stream = pair.client.chat.completions.create(
        model="gemma-a",
        messages=[{"role": "user", "content": "Count to fifty."}],
        max_tokens=48,
        stream=True,
    )
    first = next(iter(stream))  # gemma-a is now busy with this stream
    assert first
    with ThreadPoolExecutor(1) as pool:
        swap = pool.submit(chat, pair, "gemma-b")
        rest = list(stream)  # the stream must end normally, not be cut by the swap
        _, headers = swap.result(timeout=120)
    finish = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finish in (["length"], ["stop"])
    assert headers["x-modelyard-instance"] == "gemma-b#1"


def test_no_swap_header_fails_fast(pair: ServedGateway) -> None:
    chat(pair, "gemma-a")
    with pytest.raises(openai.ConflictError) as info:
        pair.client.chat.completions.create(
            model="gemma-b",
            messages=HELLO,
            max_tokens=4,
            extra_headers={"x-modelyard-no-swap": "true"},
        )
    assert "would stop gemma-a" in info.value.message
    assert pair.model("gemma-a")["state"] == "ready"
    model, _ = chat(pair, "gemma-a", extra_headers={"x-modelyard-no-swap": "true"})
    assert model == "gemma-a"


def test_concurrent_cold_requests_cause_one_start(pair: ServedGateway) -> None:
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: chat(pair, "gemma-b"), range(6)))
    assert {h["x-modelyard-instance"] for _, h in results} == {"gemma-b#1"}
    log = pair.admin("GET", "/admin/models/gemma-b/logs?lines=2000").text
    assert log.count("] starting: ") == 1


def test_crash_is_detected_and_restarted(pair: ServedGateway) -> None:
    chat(pair, "gemma-a")
    pid = pair.model("gemma-a")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # it comes back by itself, a new instance of the same model
        info = pair.model("gemma-a")
        if info["state"] == "ready" and info["pid"] != pid:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
    assert info["instance"] == "gemma-a#2"
    events = pair.admin("GET", "/admin/status").json()["events"]
    assert any(e["event"] == "crashed" and "SIGKILL" in e["detail"] for e in events)
    _, headers = chat(pair, "gemma-a")
    assert headers["x-modelyard-instance"] == "gemma-a#2"


def test_admin_api_and_cli(pair: ServedGateway) -> None:
    started = pair.cli("start", "gemma-b", "--json")
    assert started.returncode == 0, started.stderr
    ps = pair.cli("ps")
    assert "gemma-b" in ps.stdout and "ready" in ps.stdout
    logs = pair.cli("logs", "gemma-b", "-n", "50")
    assert "ready on port" in logs.stdout
    restarted = pair.cli("restart", "gemma-b")
    assert "gemma-b: ready" in restarted.stdout
    assert pair.model("gemma-b")["instance"] == "gemma-b#2"
    stopped = pair.cli("stop", "gemma-b")
    assert "gemma-b: stopped" in stopped.stdout
    assert pair.engines() == []
    status = pair.cli("status")
    assert status.returncode == 0 and "stopped" in status.stdout
    missing = pair.cli("start", "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_bad_requests_get_openai_errors(pair: ServedGateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        pair.client.chat.completions.create(model="gpt-5", messages=HELLO)
    assert "gemma-a" in info.value.message and "gemma-b" in info.value.message
    resp = httpx.post(pair.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = httpx.post(pair.url + "/v1/chat/completions", json={"messages": []}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"
    resp = httpx.get(pair.url + "/v1/nothing", timeout=10)
    assert resp.status_code == 404 and "error" in resp.json()
    assert httpx.get(pair.url + "/ready", timeout=10).status_code == 200
    assert httpx.get(pair.url + "/ready?model=gemma-b", timeout=10).status_code == 503


def test_ttl_unload_and_missing_weights(serve, gemma: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models = gemma_model("short", gemma, ttl="1s")
    models += gemma_model("broken", tmp_path / "absent.gguf")
    gw = serve(write_config(tmp_path, models))
    chat(gw, "short")
    pid = gw.model("short")["pid"]
    gw.wait_state("short", "stopped", timeout=30)
    assert gw.engines() == [] and pid is not None

    with pytest.raises(openai.APIStatusError) as info:
        gw.client.chat.completions.create(model="broken", messages=HELLO)
    assert info.value.status_code == 503
    assert "weights file not found" in info.value.message
    broken = gw.model("broken")
    assert broken["state"] == "failed" and "absent.gguf" in broken["error"]
    chat(gw, "short")  # the others keep serving


def test_command_and_remote_engines(serve, gemma: Path, llama_server: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`command` runs any server with {port}; `remote` reaches a URL already up, with a key."""
    port = free_port()
    remote = subprocess.Popen(
        [
            llama_server,
            "-m",
            str(gemma),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "-c",
            "1024",
            "--threads",
            "2",
            "--api-key",
            "sk-test",
            "--alias",
            "upstream-name",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        models = (
            "  cmd:\n    engine: command\n"
            f"    command: [{llama_server}, -m, {gemma}, --port, '{{port}}', -c, 1024,"
            " --threads, 2, --alias, server-side-name]\n"
            "    upstream_model: server-side-name\n"
            "  far:\n    engine: remote\n"
            f"    url: http://127.0.0.1:{port}/v1\n"
            "    api_key: ${TEST_REMOTE_KEY}\n"
            "    upstream_model: upstream-name\n"
        )
        config = write_config(tmp_path, models)
        os.environ["TEST_REMOTE_KEY"] = "sk-test"
        try:
            gw = serve(config)
        finally:
            del os.environ["TEST_REMOTE_KEY"]
        # Until the gateway's own probe (every 2 s) sees the remote up, routing skips it.
        deadline = time.monotonic() + 60
        probe = {"request": {"model": "far", "messages": []}}
        while not gw.admin("POST", "/admin/route/explain", json=probe).json()["candidates"]:
            assert time.monotonic() < deadline, "the gateway never saw the remote up"
            time.sleep(0.2)
        model, _ = chat(gw, "cmd")
        assert model == "cmd"  # renamed from server-side-name
        chunks = list(
            gw.client.chat.completions.create(
                model="far", messages=HELLO, max_tokens=6, stream=True
            )
        )
        assert {c.model for c in chunks} == {"far"}  # renamed in the stream too
    finally:
        remote.terminate()
        remote.wait(30)


def test_bad_config_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  a:\n    engine: llama.cpp\n    wieghts: a.gguf\n")
    check = subprocess.run(
        [sys.executable, "-m", "modelyard", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1
    assert f"{bad}:4: models.a.wieghts: unknown key" in check.stderr
    assert f"{bad}:2: models.a.weights: required key is missing" in check.stderr
    run = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "nothing was started" in run.stderr


def test_init_writes_a_config_that_validates(gemma: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "gemma-3-270m.gguf").symlink_to(gemma)
    out = tmp_path / "modelyard.yaml"
    init = subprocess.run(
        [sys.executable, "-m", "modelyard", "init", str(folder), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    text = out.read_text()
    assert "gemma-3-270m:" in text and "models/gemma-3-270m.gguf" in text
    check = subprocess.run(
        [sys.executable, "-m", "modelyard", "check", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
