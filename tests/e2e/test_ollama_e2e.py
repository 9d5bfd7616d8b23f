"""The Ollama API through a real gateway, with the official ``ollama`` client: chat,
generate, streams, embeddings, list, ps, show, pull, keep_alive, errors; on real
llama-server processes (Gemma 270M, and Gemma serving embeddings)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import (
    ServedGateway,
    alive,
    gateways,
    gemma_model,
    wait_slots_idle,
    write_config,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("ollama")
    models = (
        gemma_model("gemma-a", gemma, parallel=2, ttl="10m")
        + f"  embed:\n    engine: llama.cpp\n    weights: {gemma}\n    context: 512\n"
        + "    serves: [embeddings]\n    args: [--threads, '2', --pooling, mean]\n"
        + "  voice: {engine: command, command: [x, '{port}'], serves: [speech]}\n"
    )
    with gateways(tmp) as start:
        yield start(write_config(tmp, models))


def client(gw: ServedGateway) -> ollama.Client:
    return ollama.Client(host=gw.url, timeout=120)


def test_list_show_version_and_pull(gw: ServedGateway) -> None:
    c = client(gw)
    listed = {m.model: m for m in c.list().models}
    assert set(listed) == {"gemma-a:latest", "embed:latest"}  # not the voice
    gemma = listed["gemma-a:latest"]
    assert gemma.size and gemma.size > 100_000_000 and gemma.details is not None
    assert gemma.details.family == "gemma3" and gemma.details.format == "gguf"
    shown = c.show("gemma-a:latest")
    assert shown.modelinfo is not None and shown.modelinfo["gemma3.context_length"] == 512
    assert "completion" in (shown.capabilities or [])
    assert "embedding" in (c.show("embed").capabilities or [])
    assert httpx.get(gw.url + "/api/version").json()["version"]
    assert httpx.head(gw.url + "/").status_code == 200  # a client checking it is up
    assert httpx.get(gw.url + "/").status_code == 200  # the console's page
    assert c.pull("gemma-a").status == "success"
    with pytest.raises(ollama.ResponseError) as missing:
        c.pull("llama3.2")
    assert missing.value.status_code == 404 and "not in this gateway's config" in str(missing.value)


def test_chat_and_generate_streamed_or_not(gw: ServedGateway) -> None:
    c = client(gw)
    said = c.chat(model="gemma-a:latest", messages=[{"role": "user", "content": "Say hi."}],
                  options={"num_predict": 8, "temperature": 0})  # fmt: skip
    assert said.message.role == "assistant" and said.message.content
    assert said.done and said.done_reason in ("stop", "length")
    assert said.eval_count and said.eval_count <= 8
    assert said.total_duration and said.eval_duration and said.total_duration > said.eval_duration
    parts = list(c.chat(model="gemma-a", messages=[{"role": "user", "content": "Count."}],
                        options={"num_predict": 8}, stream=True))  # fmt: skip
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)
    assert parts[-1].eval_count == 8
    generated = c.generate(model="gemma-a", prompt="The capital of France is", raw=True,
                           options={"num_predict": 5, "temperature": 0})  # fmt: skip
    assert generated.response and generated.done_reason == "length"
    streamed = list(c.generate(model="gemma-a", prompt="Paris is", raw=True, stream=True,
                               options={"num_predict": 4}))  # fmt: skip
    assert streamed[-1].done and "".join(s.response for s in streamed[:-1])


def test_embeddings_both_forms(gw: ServedGateway) -> None:
    c = client(gw)
    out = c.embed(model="embed", input=["a cat", "a kitten"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 640  # Gemma 270M's width
    legacy = c.embeddings(model="embed", prompt="a cat")
    assert len(legacy.embedding) == 640
    assert abs(sum(a * b for a, b in zip(legacy.embedding, out.embeddings[0], strict=True))) > 0


def test_keep_alive_zero_unloads_for_real_and_ps_shows_expiry(gw: ServedGateway) -> None:
    c = client(gw)
    c.chat(model="gemma-a", messages=[{"role": "user", "content": "hi"}],
           options={"num_predict": 2}, keep_alive="5m")  # fmt: skip
    running = {m.model: m for m in c.ps().models}
    expires = running["gemma-a:latest"].expires_at
    assert expires is not None and 200 < expires.timestamp() - time.time() <= 301
    pid = gw.model("gemma-a")["pid"]
    c.chat(model="gemma-a", messages=[{"role": "user", "content": "bye"}],
           options={"num_predict": 2}, keep_alive=0)  # fmt: skip
    gw.wait_state("gemma-a", "stopped", timeout=30)
    assert not alive(pid) and "gemma-a:latest" not in {m.model for m in c.ps().models}
    loaded = c.generate(model="gemma-a", prompt="")  # Ollama's load call
    assert loaded.done_reason == "load" and gw.model("gemma-a")["state"] == "ready"


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/api/chat", {"model": "ghost", "messages": [{"role": "user", "content": "x"}]}, 404,
         "does not exist"),
        ("/api/chat", {"model": "gemma-a", "messages": "hi"}, 400, "messages"),
        ("/api/chat", {"model": "gemma-a", "messages": [], "keep_alive": "soon"}, 400,
         "keep_alive"),
        ("/api/embed", {"model": "gemma-a", "input": "x"}, 400, "does not serve embeddings"),
        ("/api/generate", {"model": "embed", "prompt": "x", "suffix": "y"}, 400, ""),
        ("/api/embed", {"model": "gemma-a"}, 400, "does not serve embeddings"),  # a load call
        ("/api/create", {"model": "x", "from": "gemma-a"}, 400, "not supported"),
        ("/api/delete", {"model": "gemma-a"}, 405, "not supported"),
    ],
)  # fmt: skip
def test_bad_requests_get_ollama_errors(
    gw: ServedGateway, path: str, body: dict[str, object], status: int, says: str
) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    resp = httpx.request(method, gw.url + path, json=body, timeout=60)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error"} and says in resp.json()["error"], resp.text


def test_a_client_that_leaves_mid_stream_frees_the_slot(gw: ServedGateway) -> None:
    body = {"model": "gemma-a", "messages": [{"role": "user", "content": "A long story."}],
            "options": {"num_predict": 400}}  # fmt: skip
    with httpx.stream("POST", gw.url + "/api/chat", json=body, timeout=60) as resp:
        for n, _ in enumerate(resp.iter_lines()):
            if n > 10:
                break
    wait_slots_idle(gw, "gemma-a")
