"""The conversations store on a temporary directory, and the capture of streamed answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

import modelyard.conversations as conversations
from modelyard.conversations import (
    ConversationPatch,
    Conversations,
    NewConversation,
    NewMessage,
    Params,
    Rejected,
)
from modelyard.gateway.capture import Captured, Recorder, last_user_text
from modelyard.gateway.conversations_api import filename, to_json, to_markdown

MAX = 4096


@pytest.fixture(params=[True, False], ids=["fts5", "like"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Conversations]:
    opened = Conversations(tmp_path / "conversations.db", MAX, fts=None if request.param else False)
    await opened.open()
    assert opened.fts is request.param  # this Python's SQLite has FTS5
    yield opened
    await opened.close()


async def test_create_read_update_delete(store: Conversations) -> None:
    made = await store.create("alice", NewConversation(title="Plans", model="gemma"))
    assert set(made) == {
        "id", "title", "model", "system", "params", "created", "updated", "message_count",
    }  # fmt: skip
    assert made["title"] == "Plans" and made["params"] == {} and made["message_count"] == 0
    id = made["id"]
    assert conversations.ID.fullmatch(id)
    await store.append("alice", id, NewMessage(role="user", content="hello"))
    got = await store.get("alice", id)
    assert got is not None and [m["content"] for m in got["messages"]] == ["hello"]
    assert got["messages"][0]["seq"] == 1 and got["messages"][0]["status"] is None

    patch = ConversationPatch.model_validate(
        {"title": "Renamed", "params": {"temperature": 0.5, "reasoning_effort": "high"}}
    )
    changed = await store.update("alice", id, patch)
    assert changed is not None and changed["title"] == "Renamed" and changed["model"] == "gemma"
    assert changed["params"] == {"temperature": 0.5, "reasoning_effort": "high"}
    assert changed["updated"] >= made["updated"]
    # params given replace the conversation's, as the console's form saves them
    patch = ConversationPatch.model_validate({"params": {"top_p": 0.9}})
    changed = await store.update("alice", id, patch)
    assert changed is not None and changed["params"] == {"top_p": 0.9}
    assert changed["title"] == "Renamed"  # what is not given stays

    assert await store.delete("alice", id)
    assert await store.get("alice", id) is None
    assert not await store.delete("alice", id)
    page, _ = await store.page("alice", "hello")
    assert page == []  # its messages went with it, from the index too


async def test_another_owner_finds_nothing(store: Conversations) -> None:
    mine = (await store.create("alice", NewConversation(title="secret plans")))["id"]
    await store.append("alice", mine, NewMessage(role="user", content="the launch code"))
    theirs = (await store.create("bob", NewConversation(title="bob's")))["id"]
    assert await store.get("bob", mine) is None
    assert await store.update("bob", mine, ConversationPatch(title="pwned")) is None
    assert not await store.delete("bob", mine)
    assert await store.append("bob", mine, NewMessage(role="user", content="x")) is None
    assert await store.cut("bob", mine, 1) is None
    assert not await store.begin("bob", mine, "sneaky")
    assert [c["id"] for c in (await store.page("bob"))[0]] == [theirs]
    assert (await store.page("bob", "launch"))[0] == []
    assert (await store.page("", ""))[0] == []  # an open gateway's owner is "" and has none
    got = await store.get("alice", mine)
    assert got is not None and got["title"] == "secret plans" and got["message_count"] == 1


async def test_search_titles_and_messages(store: Conversations) -> None:
    a = (await store.create("o", NewConversation(title="Rust lifetimes")))["id"]
    b = (await store.create("o", NewConversation(title="Dinner")))["id"]
    await store.append("o", b, NewMessage(role="user", content="A recipe with tomatoes, 50% off"))
    c = (await store.create("o", NewConversation(title="under_score")))["id"]

    async def found(q: str) -> list[str]:
        return [x["id"] for x in (await store.page("o", q))[0]]

    assert await found("rust") == [a]
    assert await found("tomatoes") == [b]
    assert await found("tomat") == [b]  # a prefix of a word
    assert await found("recipe tomatoes") == [b]  # every word
    assert await found("nothing-like-it") == []
    assert sorted(await found("")) == sorted([a, b, c])
    # Operators and quotes are text, never FTS5 syntax or LIKE wildcards.
    for hostile in ['"', "NEAR(rust", "rust OR dinner", "*", "'; DROP TABLE messages; --"]:
        await found(hostile)  # no error
    assert await found("rust OR dinner") == []  # OR is a word here, and no title has it
    assert await found("%") == [b]  # only the one holding a real "%"
    assert await found("_") == [c]
    if store.fts:  # words, whatever surrounds them
        assert await found('rust"') == [a] and await found("life* rust") == [a]


async def test_pages_by_updated_with_a_cursor(store: Conversations, monkeypatch: Any) -> None:
    monkeypatch.setattr(time, "time", lambda: 1000.0)  # all at one instant: ties by id
    made = [(await store.create("o", NewConversation(title=f"c{i}")))["id"] for i in range(5)]
    monkeypatch.undo()
    seen: list[str] = []
    before = None
    while True:
        page, after = await store.page("o", limit=2, before=before)
        seen += [c["id"] for c in page]
        if after is None:
            break
        at, _, id = after.partition(",")
        before = (float(at), id)
    assert sorted(seen) == sorted(made) and len(set(seen)) == 5
    newer = (await store.create("o", NewConversation(title="new")))["id"]
    assert (await store.page("o", limit=1))[0][0]["id"] == newer  # last updated first


async def test_bounds(store: Conversations, monkeypatch: Any) -> None:
    with pytest.raises(ValidationError, match="at most 200 characters"):
        NewConversation(title="x" * 201)
    NewConversation(title="é" * 200)  # characters, not bytes
    for bad in (
        {"temperature": 2.5},
        {"temperature": "1"},
        {"top_p": -0.1},
        {"max_tokens": 0},
        {"max_tokens": True},
        {"reasoning_effort": "extreme"},
        {"seed": 1},
    ):
        with pytest.raises(ValidationError):
            Params.model_validate(bad)
    with pytest.raises(Rejected) as big:
        await store.create("o", NewConversation(system="é" * MAX))
    assert big.value.refusal.param == "system" and big.value.refusal.status == 400
    id = (await store.create("o", NewConversation()))["id"]
    await store.append("o", id, NewMessage(role="user", content="x" * MAX))  # just fits
    with pytest.raises(Rejected):
        await store.append("o", id, NewMessage(role="user", content="x" * (MAX + 1)))
    with pytest.raises(ValidationError):
        NewMessage.model_validate({"role": "assistant", "content": "forged"})

    monkeypatch.setattr(conversations, "MAX_MESSAGES", 2)
    await store.append("o", id, NewMessage(role="user", content="two"))
    with pytest.raises(Rejected) as full:
        await store.append("o", id, NewMessage(role="user", content="three"))
    assert full.value.refusal.code == "conversation_limit" and full.value.refusal.status == 409
    with pytest.raises(Rejected):
        await store.begin("o", id, "three")
    monkeypatch.setattr(conversations, "MAX_CONVERSATIONS", 1)
    with pytest.raises(Rejected):
        await store.create("o", NewConversation())
    await store.create("p", NewConversation())  # per owner


async def test_cut_the_tail_and_capture_the_user_message(store: Conversations) -> None:
    id = (await store.create("o", NewConversation()))["id"]
    assert await store.begin("o", id, "What is   a\nGGUF file?")
    got = await store.get("o", id)
    assert got is not None and got["title"] == "What is a GGUF file?"  # the first user message
    assert await store.begin("o", id, "What is   a\nGGUF file?")  # already last: not again
    store.queue(store.save_answer, id, conversations.Answer("A file.", status="complete"))
    assert await store.begin("o", id, "And GGML?")
    got = await store.get("o", id)
    assert got is not None
    assert [(m["seq"], m["role"]) for m in got["messages"]] == [
        (1, "user"), (2, "assistant"), (3, "user"),
    ]  # fmt: skip
    assert await store.cut("o", id, 2) == 2  # regenerate from the answer on
    assert await store.begin("o", id, "What is   a\nGGUF file?")  # the same question: kept once
    got = await store.get("o", id)
    assert got is not None and [m["seq"] for m in got["messages"]] == [1]


async def test_survives_a_reopen(tmp_path: Path) -> None:
    first = Conversations(tmp_path / "c.db", MAX)
    await first.open()
    id = (await first.create("o", NewConversation(title="kept")))["id"]
    await first.append("o", id, NewMessage(role="user", content="persistent words"))
    await first.close()
    with pytest.raises(RuntimeError):
        await first.get("o", id)
    again = Conversations(tmp_path / "c.db", MAX)
    await again.open()
    got = await again.get("o", id)
    assert got is not None and got["messages"][0]["content"] == "persistent words"
    assert [c["id"] for c in (await again.page("o", "persistent"))[0]] == [id]
    await again.close()


async def test_export_formats(store: Conversations) -> None:
    hostile = '../../etc/passwd"\r\nX-Injected: 1 <script>'
    id = (
        await store.create("o", NewConversation(title=hostile, model="gemma", system="Be brief."))
    )["id"]
    await store.append("o", id, NewMessage(role="user", content="Why?"))
    answer = conversations.Answer(
        "Because.", "thinking it over", "gemma-a", "local", "d1", 0.1, 3, 10.0, "stopped"
    )
    store.queue(store.save_answer, id, answer)
    got = await store.get("o", id)
    assert got is not None
    md = to_markdown(got).decode()
    assert md.startswith("# ../../etc/passwd") and "## System prompt\n\nBe brief." in md
    assert "## User\n\nWhy?" in md and "## Assistant (gemma-a)" in md
    assert "<details><summary>Reasoning</summary>\n\nthinking it over" in md
    assert "*(stopped)*" in md
    data = orjson.loads(to_json(got))
    assert data["format"] == "modelyard.conversation/1" and data["title"] == hostile
    assert data["messages"][1]["reasoning"] == "thinking it over"
    assert data["messages"][1]["status"] == "stopped"
    name = filename(got, "md")
    assert name == f"etc-passwd-X-Injected-1-script-{id}.md"
    assert filename({"title": "...", "id": "x"}, "json") == "conversation-x.json"


def _event(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
    event = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _relay(chunks: list[bytes], hang: bool = False) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if hang:
        await asyncio.sleep(3600)


async def _captured(store: Conversations, chunks: list[bytes], read: int | None) -> dict[str, Any]:
    """A stream of ``chunks`` through Captured, read ``read`` chunks (None: all) then closed
    as ProxyStream closes it; the answer stored."""
    id = (await store.create("o", NewConversation()))["id"]
    recorder = Recorder(store, id, time.monotonic(), MAX)
    stream = Captured(_relay(chunks, hang=read is not None), recorder)
    got: list[bytes] = []
    async for chunk in stream:
        got.append(chunk)
        if read is not None and len(got) == read:
            break
    await stream.aclose()
    await stream.aclose()  # twice: saved once
    assert b"".join(got) == b"".join(chunks[: len(got)])  # relayed untouched
    found = await store.get("o", id)
    assert found is not None and len(found["messages"]) == 1
    return dict(found["messages"][0])


async def test_a_captured_stream_is_saved_however_it_ends(store: Conversations) -> None:
    first = _event({"role": "assistant", "reasoning_content": "hmm"})
    events = [first, _event({"content": "Hel"}), _event({"content": "lo"})]
    whole = b"".join([*events, _event({}, "stop", timings={"predicted_n": 2}), b"data: [DONE]\n\n"])
    cut_anywhere = [whole[i : i + 7] for i in range(0, len(whole), 7)]  # lines split mid-way
    done = await _captured(store, cut_anywhere, None)
    assert (done["role"], done["content"], done["reasoning"]) == ("assistant", "Hello", "hmm")
    assert done["status"] == "complete" and done["tokens_out"] == 2 and done["error"] is None
    assert done["ttft_s"] is not None and done["ttft_s"] >= 0

    stopped = await _captured(store, events, 2)  # the client left after two chunks
    assert (stopped["status"], stopped["content"], stopped["reasoning"]) == (
        "stopped",
        "Hel",
        "hmm",
    )

    error = (
        b'data: {"error": {"message": "gemma-a: its server failed mid-stream", "code": "x"}}\n\n'
    )
    cut = await _captured(store, [*events, error], None)
    assert (cut["status"], cut["content"]) == ("cut", "Hello")
    assert cut["error"] == "gemma-a: its server failed mid-stream"

    ended = await _captured(store, events, None)  # no [DONE], no finish_reason: cut short
    assert (ended["status"], ended["content"]) == ("cut", "Hello")
    assert ended["error"] == "the server ended the stream before the answer's end"

    waited = b": modelyard: model=gemma-b instance=gemma-b#1 node=box\n\n"
    late = await _captured(store, [b": modelyard: waiting\n\n", waited, whole], None)
    assert (late["model"], late["node"], late["status"]) == ("gemma-b", "box", "complete")


async def test_an_unread_stream_is_saved_when_closed(store: Conversations) -> None:
    id = (await store.create("o", NewConversation()))["id"]
    stream = Captured(_relay([_event({"content": "x"})]), Recorder(store, id, 0.0, MAX))
    await stream.aclose()  # never iterated: the client left before the first byte
    found = await store.get("o", id)
    assert found is not None and found["messages"][0]["status"] == "stopped"


async def test_a_whole_answer_and_a_refusal(store: Conversations) -> None:
    id = (await store.create("o", NewConversation()))["id"]
    body = {
        "choices": [{"message": {"role": "assistant", "content": "Hi.", "reasoning_content": "r"}}],
        "usage": {"completion_tokens": 3},
    }
    Recorder(store, id, 0.0, MAX).whole(200, orjson.dumps(body))
    refusal = {"error": {"message": "model 'x' does not exist", "code": "model_not_found"}}
    Recorder(store, id, 0.0, MAX).whole(404, orjson.dumps(refusal))
    found = await store.get("o", id)
    assert found is not None
    ok, refused = found["messages"]
    assert (ok["content"], ok["reasoning"], ok["tokens_out"], ok["status"]) == (
        "Hi.",
        "r",
        3,
        "complete",
    )
    assert (refused["status"], refused["error"]) == ("error", "model 'x' does not exist")


async def test_a_long_answer_is_kept_cut_to_the_bound(store: Conversations) -> None:
    id = (await store.create("o", NewConversation()))["id"]
    recorder = Recorder(store, id, 0.0, MAX)
    recorder.feed(b"".join(_event({"content": "é" * 1000}) for _ in range(10)))
    recorder.end()
    found = await store.get("o", id)
    assert found is not None
    kept = found["messages"][0]
    assert len(kept["content"].encode()) <= MAX and "max_body" in kept["error"]


def test_the_last_user_message_of_a_request() -> None:
    def body(*messages: dict[str, Any]) -> bytes:
        return orjson.dumps({"model": "m", "messages": list(messages)})

    sys, user = {"role": "system", "content": "s"}, {"role": "user", "content": "q"}
    assert last_user_text(body(sys, user, {"role": "assistant", "content": "a"})) == "q"
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert last_user_text(body({"role": "user", "content": parts})) == "look"
    assert last_user_text(body(sys)) is None
    assert last_user_text(b"not json") is None and last_user_text(b"[1]") is None


async def test_the_answer_is_saved_before_the_client_sees_its_end(store: Conversations) -> None:
    id = (await store.create("o", NewConversation()))["id"]
    chunks = [_event({"content": "ok"}, "stop"), b"data: [DONE]\n\n"]
    stream = Captured(_relay(chunks, hang=True), Recorder(store, id, 0.0, MAX))
    assert await anext(stream) == chunks[0]
    assert await anext(stream) == chunks[1]  # [DONE] relayed: the upstream's EOF not yet read
    found = await store.get("o", id)
    assert found is not None and found["messages"][0]["status"] == "complete"
    await stream.aclose()
