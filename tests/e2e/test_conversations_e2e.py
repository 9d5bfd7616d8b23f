"""The console's conversations against a real gateway and a real llama-server: each key
sees its own, a streamed answer is kept whole as it streams, a stopped one keeps what the
client received, and all of it outlives a restart.

One gateway serves the module (two keys, Gemma on the CPU); the last test restarts it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import (
    ServedGateway,
    access_keys,
    alive,
    gemma_model,
    wait_healthy,
    write_config,
)

pytestmark = pytest.mark.e2e

ALICE, BOB = "sk-alice-conversations", "sk-bob-conversations"
API = "/console/api/conversations"
HEADER = "x-modelyard-conversation"


class Gateway:
    """One gateway process on a config, started again on demand (same state dir)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.served: ServedGateway | None = None
        self.start()

    def start(self) -> None:
        import yaml

        listen = yaml.safe_load(self.config.read_text())["listen"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", "-c", str(self.config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.served = ServedGateway(proc, f"http://{listen}", self.config, self.log, key=ALICE)
        wait_healthy(self.served.url, proc, lambda: self.log.read_text())

    def stop(self) -> None:
        assert self.served is not None
        engines = self.served.engines()
        self.served.proc.send_signal(signal.SIGTERM)
        self.served.proc.wait(60)
        deadline = time.monotonic() + 15
        while [p for p in engines if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in engines if alive(p)], "engines outlived the gateway"

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    def call(self, method: str, path: str, key: str | None = ALICE, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def sdk(self, key: str = ALICE) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    def messages(self, id: str, want: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The conversation's messages once it has ``want`` of them (saved off the loop)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.call("GET", f"{API}/{id}").json()["messages"]
            if len(found) >= want or time.monotonic() > deadline:
                return list(found)
            time.sleep(0.1)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("conversations")
    keys = access_keys(("alice", ALICE, ""), ("bob", BOB, ""))
    config = write_config(tmp, gemma_model("gemma", gemma), keys)
    gateway = Gateway(config, tmp / "gateway.log")
    yield gateway
    gateway.stop()


def _new(gw: Gateway, key: str = ALICE, **fields: Any) -> str:
    r = gw.call("POST", API, key, json=fields)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _error(r: httpx.Response, status: int, code: str | None, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error


def test_each_key_sees_only_its_own_and_hostile_input_is_refused(gw: Gateway) -> None:
    mine = _new(gw, title="alice's plans", model="gemma", params={"temperature": 0.2})
    r = gw.call("POST", f"{API}/{mine}/messages", json={"role": "user", "content": "the secret"})
    assert r.status_code == 201 and r.json()["seq"] == 1
    theirs = _new(gw, BOB, title="bob's")

    # Another key's conversation is not found, whatever is asked of it.
    for method, path, kw in [
        ("GET", f"{API}/{mine}", {}),
        ("PATCH", f"{API}/{mine}", {"json": {"title": "pwned"}}),
        ("DELETE", f"{API}/{mine}", {}),
        ("GET", f"{API}/{mine}/export?format=json", {}),
        ("POST", f"{API}/{mine}/messages", {"json": {"role": "user", "content": "x"}}),
        ("DELETE", f"{API}/{mine}/messages?from=1", {}),
    ]:
        _error(gw.call(method, path, BOB, **kw), 404, "conversation_not_found")
    assert [c["id"] for c in gw.call("GET", API, BOB).json()["data"]] == [theirs]
    assert gw.call("GET", API + "?q=secret", BOB).json()["data"] == []
    with pytest.raises(openai.NotFoundError):  # refused before anything runs
        gw.sdk(BOB).chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={HEADER: mine},
        )
    kept = gw.call("GET", f"{API}/{mine}").json()
    assert kept["title"] == "alice's plans" and kept["message_count"] == 1
    assert gw.call("GET", API, None).status_code == 401

    # Hostile or clumsy input: a clear 4xx naming the field, never a 500.
    typed = {"Content-Type": "application/json"}
    form = {"Content-Type": "text/plain"}  # what another site's page could send: refused
    assert gw.call("POST", API, content=b'{"title": "csrf"}', headers=form).status_code == 415
    _error(gw.call("POST", API, content=b"{not json", headers=typed), 400, None)
    _error(gw.call("POST", API, content=b"[1, 2]", headers=typed), 400, None)
    surrogate = b'{"title": "\\ud800"}'  # a lone surrogate: not UTF-8
    _error(gw.call("POST", API, content=surrogate, headers=typed), 400, None)
    _error(gw.call("POST", API, json={"title": "x" * 201}), 400, "invalid_request", "title")
    _error(gw.call("POST", API, json={"owner": "bob"}), 400, "invalid_request", "owner")
    bad = {"params": {"temperature": 5}}
    _error(
        gw.call("PATCH", f"{API}/{mine}", json=bad), 400, "invalid_request", "params.temperature"
    )
    bad = {"role": "assistant", "content": "forged"}
    _error(gw.call("POST", f"{API}/{mine}/messages", json=bad), 400, "invalid_request", "role")
    _error(gw.call("GET", API + "?limit=100000"), 400, "invalid_request", "limit")
    _error(gw.call("GET", API + "?before=nan"), 400, "invalid_request", "before")
    _error(gw.call("GET", API + "?q=" + "q" * 201), 400, "invalid_request", "q")
    for given in ["-1", "0", "1.5", "9" * 5000, "\u0663"]:  # int() takes "٣", fails on 5,000 digits
        r = gw.call("DELETE", f"{API}/{mine}/messages", params={"from": given})
        _error(r, 400, "invalid_request", "from")
    _error(gw.call("GET", f"{API}/{mine}/export?format=exe"), 400, "invalid_request", "format")
    for id in ["..%2F..%2Fetc", "x" * 65, "a%00b", "%2e%2e", "a'b", "~"]:
        assert gw.call("GET", f"{API}/{id}").status_code == 404, id
    with pytest.raises(openai.NotFoundError):
        gw.sdk().chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={HEADER: "../x"},
        )
    r = gw.call("POST", API, content=b"[" * 5000, headers=typed)  # deep: a 400, not a crash
    assert r.status_code == 400
    assert gw.call("GET", "/health", None).status_code == 200


def test_a_streamed_answer_is_kept_whole_and_exports(gw: Gateway) -> None:
    id = _new(gw, model="gemma")
    raw = gw.sdk().chat.completions.with_raw_response.create(
        model="gemma",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        stream=True,
        extra_headers={HEADER: id},
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text
    user, answer = gw.messages(id, 2)
    assert (user["role"], user["content"], answer["role"]) == ("user", "Say hello.", "assistant")
    assert answer["content"] == text and answer["status"] == "complete" and answer["error"] is None
    # The model was loading: the stream began at once, naming model and node only in its
    # keep-alive comment (the headers had left before they were known).
    assert answer["model"] == raw.headers.get("x-modelyard-model", "gemma") == "gemma"
    assert answer["node"] == raw.headers.get("x-modelyard-node", answer["node"]) == "local"
    assert answer["decision"] == raw.headers["x-modelyard-decision"]
    assert answer["ttft_s"] > 0 and answer["tokens_out"] >= 1

    # The next turn, not streamed, sent with the history the console keeps.
    history = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": text},
        {"role": "user", "content": "Again."},
    ]
    again = gw.sdk().chat.completions.create(
        model="gemma",
        messages=history,
        max_tokens=8,
        extra_headers={HEADER: id},  # type: ignore[arg-type]
    )
    found = gw.messages(id, 4)
    assert [m["role"] for m in found] == ["user", "assistant", "user", "assistant"]
    assert (
        found[3]["content"] == again.choices[0].message.content and found[3]["status"] == "complete"
    )
    conversation = gw.call("GET", f"{API}/{id}").json()
    assert conversation["title"] == "Say hello."  # untitled: its first question names it

    md = gw.call("GET", f"{API}/{id}/export?format=markdown")
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.headers["content-disposition"] == f'attachment; filename="Say-hello-{id}.md"'
    assert "## User\n\nSay hello." in md.text and f"## Assistant (gemma)\n\n{text}" in md.text
    js = gw.call("GET", f"{API}/{id}/export?format=json")
    assert js.headers["content-disposition"].endswith(f'{id}.json"')
    assert [m["content"] for m in orjson.loads(js.content)["messages"]][:2] == ["Say hello.", text]

    # Regenerate: cut the tail from the last answer; its question is not stored twice.
    assert gw.call("DELETE", f"{API}/{id}/messages?from=4").json()["deleted"] == 1
    gw.sdk().chat.completions.create(
        model="gemma",
        messages=history,
        max_tokens=4,
        extra_headers={HEADER: id},  # type: ignore[arg-type]
    )
    assert [m["seq"] for m in gw.messages(id, 4)] == [1, 2, 3, 4]


def test_a_stopped_stream_keeps_what_the_client_received(gw: Gateway) -> None:
    id = _new(gw, model="gemma")
    stream = gw.sdk().chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Count from 1 to 500, one number a line."}],
        max_tokens=400,
        stream=True,
        extra_headers={HEADER: id},
    )
    received = ""
    pieces = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += chunk.choices[0].delta.content
            pieces += 1
            if pieces == 4:
                break
    stream.close()  # the client goes away mid-answer
    found = gw.messages(id, 2)
    assert len(found) == 2, found
    answer = found[1]
    assert answer["status"] == "stopped", answer
    assert answer["content"].startswith(received) and received
    assert answer["tokens_out"] < 400


def test_conversations_outlive_a_restart(gw: Gateway) -> None:
    id = _new(gw, title="Kept across restarts", system="Be brief.", params={"max_tokens": 64})
    gw.call("POST", f"{API}/{id}/messages", json={"role": "user", "content": "zebra crossing"})
    before = gw.call("GET", f"{API}/{id}").json()
    gw.stop()
    gw.start()
    assert gw.call("GET", f"{API}/{id}").json() == before
    listed = gw.call("GET", API + "?q=zebra").json()
    assert [c["id"] for c in listed["data"]] == [id] and listed["search"] == "fts5"
    assert gw.call("DELETE", f"{API}/{id}").json() == {"id": id, "deleted": True}
    assert gw.call("GET", f"{API}/{id}").status_code == 404
