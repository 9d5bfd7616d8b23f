"""Hostile and clumsy clients against one gateway with keys: every answer is a clear error
in the OpenAI shape, nothing is stored that routing did not read, nothing grows unbounded.

One gateway serves the module: ``slow`` (tests/slow_upstream.py, one slot, a queue of
one), ``paced`` (the same, for the Retry-After test alone), ``gemma-a`` (llama-server,
chat only) and ``gemma-embed`` (the same file served for embeddings alone).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    ServedGateway,
    access_keys,
    alive,
    free_port,
    gemma_model,
    stub_model,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

KEY = "sk-hostile-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("hostile")
    config = tmp / "modelyard.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp / 'state'}\n"
        + access_keys(("ops", KEY, "scopes: [user, admin]"))
        + f"  max_body: {MAX_BODY}\n  body_timeout: 1\n"
        + "policy:\n  - {name: big-header, header: {x-tier: big}, use: slow}\n"
        + "models:\n"
        + stub_model("slow", slots=1, queue=1)
        + stub_model("paced", slots=1, queue=1)
        + gemma_model("gemma-a", gemma)
        + f"  gemma-embed:\n    engine: llama.cpp\n    weights: {gemma}\n    context: 512\n"
        + "    serves: [embeddings]\n    args: [--threads, '2', --pooling, mean]\n",
        encoding="utf-8",
    )
    log = tmp / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    import yaml

    gateway = ServedGateway(
        proc, f"http://{yaml.safe_load(config.read_text())['listen']}", config, log, key=KEY
    )
    wait_healthy(gateway.url, proc, lambda: log.read_text())
    yield gateway
    engines = gateway.engines()
    proc.terminate()
    proc.wait(60)
    time.sleep(0.5)
    assert not [pid for pid in engines if alive(pid)]


def _sdk(gw: ServedGateway, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=retries)


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def _error(r: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of ``r`` (asserting its shape)."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def _until_counted(gw: ServedGateway, model: str, **counts: int) -> None:
    """Waits until ``model``'s audit shows ``counts`` (a thread's request has arrived)."""
    deadline = time.monotonic() + 30
    while {k: gw.model(model)[k] for k in counts} != counts:
        assert time.monotonic() < deadline, f"{model} never showed {counts}"
        time.sleep(0.02)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def test_a_decision_keeps_only_the_headers_routing_reads(gw: ServedGateway) -> None:
    headers = {
        **AUTH,
        "x-tier": "big",
        "openai-organization": "org-SECRET1",
        "x-goog-api-key": "SECRET2",
        "x-junk": "j" * 10_000,
    }
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json=_chat("auto", stub={"chunks": 1}),
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-modelyard-rule"] == "big-header"
    decision = gw.admin("GET", "/admin/decisions/" + r.headers["x-modelyard-decision"]).json()
    kept = decision["features"]
    assert kept["headers"] == {"x-tier": "big"}
    assert kept["header_count"] >= 5 and kept["header_bytes"] > 10_000
    stored = json.dumps(gw.admin("GET", "/admin/decisions?limit=1000").json())
    stored += json.dumps(gw.admin("GET", "/admin/requests?limit=1000").json())
    assert "SECRET" not in stored and "jjjj" not in stored and KEY not in stored


def test_a_chunked_body_over_max_body_is_refused_as_it_is_read(gw: ServedGateway) -> None:
    """Refused at the bound with 413, JSON or not; the gateway's memory does not follow."""
    before = _rss_kib(gw.proc.pid)
    for payload in (
        b'{"model": "slow", "messages": [' + b'{"role":"user","content":"x"},' * 20,
        b"not json at all " * 64,
    ):
        status, body = _send_chunked(gw, payload, total=50 * 1024**2)
        assert status == 413, body
        assert "access.max_body" in json.loads(body)["error"]["message"]
    assert _rss_kib(gw.proc.pid) - before < 20 * 1024  # not 50 MB read and parsed


def _send_chunked(gw: ServedGateway, piece: bytes, total: int) -> tuple[int, bytes]:
    """POST ``piece`` again and again as a chunked body until ``total`` bytes or the
    gateway answers; returns its status and body."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
        )
        sent = 0
        try:
            while sent < total:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway answered and closed: what it said is in the buffer
        answer = b""
        with_timeout = time.monotonic() + 10
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 30:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data or time.monotonic() > with_timeout:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert sent < total, "the whole 50 MB went in: nothing refused it on the way"
    return int(head.split()[1]), body


def test_a_stalled_upload_is_dropped_with_408_and_not_counted_as_waiting(gw: ServedGateway) -> None:
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n" + b'{"model": "slow"'
        )
        began = time.monotonic()
        answer = s.recv(65536)
        waited = time.monotonic() - began
        while data := s.recv(65536):  # to the end: the gateway closes the connection
            answer += data
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"access.body_timeout" in answer
    assert 0.9 < waited < 5
    deadline = time.monotonic() + 5  # rows are written within a second
    while not (rows := gw.admin("GET", "/admin/requests?status=408").json()["requests"]):
        assert time.monotonic() < deadline, "the 408 left no row"
        time.sleep(0.1)
    assert rows[0]["wait_s"] is None and rows[0]["error"].startswith("the body stopped")


@pytest.mark.parametrize(
    ("engine_status", "engine_error", "status", "says"),
    [
        pytest.param(
            400,
            {"error": {"code": 400, "message": "tokens bad", "type": "x"}},
            400,
            "tokens bad",
            id="4xx-stays",
        ),
        pytest.param(429, {"error": "slow down"}, 429, "slow down", id="4xx-string-error"),
        pytest.param(
            500,
            {"error": {"code": 500, "message": "boom"}},
            502,
            "slow failed (500)",
            id="5xx-becomes-502",
        ),
        pytest.param(
            501,
            {"error": {"message": "no embeddings"}},
            400,
            "slow does not serve this endpoint",
            id="501-is-the-clients",
        ),
    ],
)
def test_an_engines_error_reaches_the_client_in_our_shape(
    gw: ServedGateway, engine_status: int, engine_error: Any, status: int, says: str
) -> None:
    body = _chat("slow", stub={"fail": engine_status, "error": engine_error})
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == status, r.text
    error = _error(r)
    assert says in error["message"]
    assert error["code"] is None or isinstance(error["code"], str)


def test_a_message_without_a_role_is_the_clients_400_naming_the_field(gw: ServedGateway) -> None:
    body = {"model": "gemma-a", "messages": [{"content": "hi"}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400
    assert _error(r)["param"] == "messages[0].role"
    assert gw.model("gemma-a")["state"] == "stopped"  # refused before any engine ran


def test_embeddings_on_a_chat_model_are_a_400_at_once_naming_the_key(gw: ServedGateway) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _sdk(gw, retries=2).embeddings.create(model="gemma-a", input="hello")
    assert refused.value.code == "unsupported_endpoint"
    assert "models.gemma-a.serves" in refused.value.message
    assert gw.model("gemma-a")["state"] == "stopped"  # never swapped in for nothing
    rows = gw.admin("GET", "/admin/requests?asked=gemma-a&status=400").json()["requests"]
    assert len([r for r in rows if r["endpoint"] == "/embeddings"]) == 1  # no SDK retry
    vector = _sdk(gw).embeddings.create(model="gemma-embed", input="hello").data[0].embedding
    assert len(vector) > 100


def test_retry_after_is_the_queue_ahead_at_the_measured_pace(gw: ServedGateway) -> None:
    """A client that waits as long as the 429 says finds the line gone: served at once."""
    sdk = _sdk(gw)
    for _ in range(2):  # the pace: 1.5 s a request
        sdk.chat.completions.create(**_chat("paced"), extra_body={"stub": {"first_byte": 1.5}})

    def one() -> None:
        sdk.chat.completions.create(**_chat("paced"), extra_body={"stub": {"first_byte": 1.5}})

    running, queued = threading.Thread(target=one), threading.Thread(target=one)
    running.start()
    _until_counted(gw, "paced", in_flight=1, waiting=0)
    queued.start()
    _until_counted(gw, "paced", in_flight=1, waiting=1)
    r = httpx.post(gw.url + "/v1/chat/completions", json=_chat("paced"), headers=AUTH, timeout=30)
    assert r.status_code == 429, r.text
    wait = int(r.headers["Retry-After"])
    assert wait >= 3  # one running and one queued, 1.5 s each, on one slot
    time.sleep(wait)
    began = time.monotonic()
    again = httpx.post(
        gw.url + "/v1/chat/completions",
        json=_chat("paced", stub={"first_byte": 0}),
        headers=AUTH,
        timeout=30,
    )
    assert again.status_code == 200 and time.monotonic() - began < 1.0
    running.join()
    queued.join()


def test_ready_for_a_model_needs_a_key_once_keys_are_set(gw: ServedGateway) -> None:
    assert httpx.get(gw.url + "/ready", timeout=10).status_code == 200
    assert httpx.get(gw.url + "/health", timeout=10).status_code == 200
    for name in ("slow", "no-such-model"):
        r = httpx.get(gw.url + f"/ready?model={name}", timeout=10)
        assert r.status_code == 401, r.text  # the same answer whether the name exists or not
    assert httpx.get(gw.url + "/ready?model=nope", headers=AUTH, timeout=10).status_code == 404


@pytest.mark.parametrize("lines", ["0", "-1", "2001", "x"])
def test_logs_lines_out_of_range_is_a_400(gw: ServedGateway, lines: str) -> None:
    r = gw.admin("GET", f"/admin/models/slow/logs?lines={lines}")
    assert r.status_code == 400 and _error(r)["param"] == "lines"


def test_logs_gives_at_most_the_lines_asked(gw: ServedGateway) -> None:
    gw.admin("POST", "/admin/models/slow/start")
    r = gw.admin("GET", "/admin/models/slow/logs?lines=2", headers={"accept": "application/json"})
    assert r.status_code == 200 and 1 <= len(r.json()["lines"]) <= 2


def test_explain_with_json_nested_10000_deep_is_a_400(gw: ServedGateway) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    r = gw.admin("POST", "/admin/route/explain", content=f'{{"request": {deep}}}')
    assert r.status_code == 400 and "not valid JSON" in _error(r)["message"]


def test_the_sdks_models_retrieve_finds_a_model_an_alias_and_a_tier(gw: ServedGateway) -> None:
    sdk = _sdk(gw)
    assert sdk.models.retrieve("slow").id == "slow"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("nope")
    assert "known models" in missing.value.message


def test_a_stream_that_waited_for_its_model_says_which_one_served_it(gw: ServedGateway) -> None:
    """Queued behind slow's one busy slot (not behind a load, whose length is the machine's),
    the stream says it waits, then which instance served it."""
    busy = _chat("slow", stream=True, stub={"chunks": 3, "stall_after": 1})  # until it leaves
    url = gw.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=busy, headers=AUTH, timeout=60) as first:
        lines = first.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the slot is taken
        waiting = _chat("slow", stream=True, stub={"chunks": 1})
        with httpx.stream("POST", url, json=waiting, headers=AUTH, timeout=60) as second:
            seen = second.iter_lines()
            assert next(seen).startswith(": modelyard: waiting")
            first.close()  # its client leaves: the slot frees, the second is served
            text = "\n".join(seen)
    assert ": modelyard: model=slow instance=slow#" in text and "node=local" in text
    assert text.rstrip().endswith("data: [DONE]")
