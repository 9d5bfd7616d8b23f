"""Harmony (gpt-oss) tags cleaned out of a chat answer: the parser, then the stream.

The parser is checked table by table, each answer fed whole, cut in two at every place,
cut in three, and fed one character at a time: every way gives the same answer and
reasoning. The stream rewriter is checked the same way on the events' bytes, then through
the real ``forward`` from an aiohttp upstream in this process that sends its answer in
pieces cut at awkward places (inside a tag, inside an event's JSON, across events), one
piece per read of the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from modelyard.config import parse_config
from modelyard.engines.base import Upstream
from modelyard.gateway.app import create_app
from modelyard.gateway.harmony_stream import HarmonyStream
from modelyard.gateway.proxy import ProxyStream, Result, Rewriter, forward, new_client
from modelyard.gateway.timeouts import Limits
from modelyard.harmony import TAGS, Parser

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
FULL = (
    '<|channel|>analysis<|message|>User asks: "What is 2 + 2?" Simple.<|end|>'
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
TOOLS = (
    "<|channel|>analysis<|message|>Need the weather.<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Checking two cities.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"location":"SF"}<|call|>'
)
PLAIN = "Plain text: 1 < 2, a <b>tag</b>, a <|pipe|> and |> alone, <| and <"

CASES = [
    pytest.param(FULL, "2 + 2 = 4.", 'User asks: "What is 2 + 2?" Simple.', id="full"),
    pytest.param(PLAIN, PLAIN, "", id="no-tags"),
    pytest.param("", "", "", id="empty"),
    pytest.param("<|channel|>analysis<|message|>Hmm.<|end|>", "", "Hmm.", id="analysis-only"),
    pytest.param(
        "<|start|>assistant<|channel|>final<|message|>Hi.<|return|>", "Hi.", "", id="final-only"
    ),
    pytest.param("<|channel|>final<|message|>Hi.", "Hi.", "", id="final-unterminated"),
    pytest.param(
        "<|channel|>analysis<|message|>still thinking", "", "still thinking", id="analysis-cut"
    ),
    pytest.param(
        "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>fin",
        "",
        "a",
        id="header-cut",
    ),
    pytest.param(
        "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b <|me",
        "b <|me",
        "a",
        id="tag-cut-is-text",
    ),
    pytest.param(TOOLS, "Checking two cities.", 'Need the weather.\n{"location":"SF"}', id="tools"),
    pytest.param(
        "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>",
        "",
        "{}",
        id="recipient-in-role",
    ),
    pytest.param(
        '<|channel|>analysis to=browser.search<|message|>{"query":"x"}<|call|>',
        "",
        '{"query":"x"}',
        id="builtin-tool",
    ),
    pytest.param(
        "<|channel|>analysis<|message|>one<|end|><|start|>assistant<|channel|>analysis"
        "<|message|>two<|end|>\n<|start|>assistant<|channel|>final<|message|>ok<|return|>\n",
        "ok",
        "one\ntwo",
        id="two-thoughts-and-newlines-between",
    ),
    pytest.param("<|channel|>final<|message|>b<|end|> and more", "b and more", "", id="stray"),
    pytest.param("2 + 2 = 4.", "2 + 2 = 4.", "", id="engine-removed-tags"),
    pytest.param("a <|endoftext|> b", "a <|endoftext|> b", "", id="other-specials-are-text"),
]


def _run(pieces: list[str]) -> tuple[str, str]:
    parser = Parser()
    answer, reasoning = [], []
    for piece in pieces:
        a, r = parser.feed(piece)
        answer.append(a)
        reasoning.append(r)
    a, r = parser.end()
    return "".join([*answer, a]), "".join([*reasoning, r])


@pytest.mark.parametrize(("text", "answer", "reasoning"), CASES)
def test_the_parser_gives_the_same_for_every_way_of_cutting(
    text: str, answer: str, reasoning: str
) -> None:
    assert _run([text]) == (answer, reasoning)
    assert _run(list(text)) == (answer, reasoning)
    for i in range(len(text) + 1):
        assert _run([text[:i], text[i:]]) == (answer, reasoning), i
    for i in range(0, len(text) + 1, 3):
        for j in range(i, len(text) + 1, 2):
            assert _run([text[:i], text[i:j], text[j:]]) == (answer, reasoning), (i, j)
    assert not any(tag in answer or tag in reasoning for tag in TAGS)


def test_text_without_tags_is_held_back_only_where_a_tag_may_begin() -> None:
    for i in range(len(PLAIN) + 1):
        parser = Parser()
        out, reasoning = parser.feed(PLAIN[:i])
        held = PLAIN[len(out) : i]
        assert PLAIN[:i] == out + held and not reasoning
        assert held == "" or any(tag.startswith(held) for tag in TAGS), (i, held)
    parser = Parser()
    assert [parser.feed(c)[0] for c in "no angle here"] == list("no angle here")
    assert parser.feed("x <")[0] == "x " and parser.feed("b")[0] == "<b"
    assert parser.feed("<|cha")[0] == "" and parser.feed("ir|>")[0] == "<|chair|>"


# The stream: events as llama-server sends them when it leaves Harmony unparsed.
TOKENS = [
    "<|channel|>",
    "analysis",
    "<|message|>",
    "User",
    " asks.",
    "<|end|>",
    "<|start|>",
    "assistant",
    "<|channel|>",
    "final",
    "<|message|>",
    "2 + 2",
    " = 4.",
]


def _event(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "choices": [{"finish_reason": finish, "index": index, "delta": delta}],
        "created": 1700000000,
        "id": "chatcmpl-7",
        "model": "upstream-name",
        "system_fingerprint": "b6000",
        "object": "chat.completion.chunk",
    }


def _sse(events: list[dict[str, Any]], done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def _stream(tokens: list[str], *, finish: bool = True, done: bool = True) -> bytes:
    events = [_event({"role": "assistant", "content": None})]
    events += [_event({"content": t}) for t in tokens]
    if finish:
        events.append(_event({}, "stop"))
        usage = {"prompt_tokens": 9, "completion_tokens": len(tokens), "total_tokens": 99}
        events.append({**_event({}), "choices": [], "usage": usage})
    return _sse(events, done)


HARMONY = _stream(TOKENS)


def _events(body: bytes) -> list[dict[str, Any]]:
    """The events a client reads; checks they are well formed, each ended by a blank line."""
    assert body.endswith(b"\n\n")
    out = []
    for block in body[:-2].split(b"\n\n"):
        assert block.startswith(b"data: ") and b"\n" not in block, block
        if block != b"data: [DONE]":
            out.append(orjson.loads(block[6:]))
    return out


def _read(body: bytes, index: int = 0) -> tuple[str, str]:
    """What a client shows: the content and the reasoning of choice ``index``."""
    content, reasoning = [], []
    for event in _events(body):
        for choice in event["choices"]:
            if choice["index"] == index:
                content.append(choice["delta"].get("content") or "")
                reasoning.append(choice["delta"].get("reasoning_content") or "")
    return "".join(content), "".join(reasoning)


def _rewrite(pieces: list[bytes], rewriter: Rewriter | None = None) -> bytes:
    rewriter = rewriter or HarmonyStream()
    return b"".join([rewriter.feed(p) for p in pieces]) + rewriter.end()


def test_the_stream_is_cleaned_alike_however_its_bytes_are_cut() -> None:
    whole = _rewrite([HARMONY])
    assert _read(whole) == ("2 + 2 = 4.", "User asks.")
    events = _events(whole)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == len(TOKENS)
    assert whole.endswith(b"data: [DONE]\n\n")
    assert len(events) == 1 + 4 + 2  # the role's, one per piece of text, the end and usage
    assert all(e["model"] == "upstream-name" and e["id"] == "chatcmpl-7" for e in events)
    for i in range(len(HARMONY) + 1):
        assert _rewrite([HARMONY[:i], HARMONY[i:]]) == whole, i
    assert _rewrite([HARMONY[i : i + 1] for i in range(len(HARMONY))]) == whole


def test_each_choice_has_its_own_parser() -> None:
    events = [_event({"role": "assistant", "content": None}, index=i) for i in (0, 1)]
    other = ["<|channel|>", "final", "<|message|>", "Four", "."]
    for a, b in zip(TOKENS, [*other, *[""] * len(TOKENS)], strict=False):
        events += [_event({"content": a}, index=0), _event({"content": b}, index=1)]
    events += [_event({}, "stop", index=0), _event({}, "stop", index=1)]
    body = _rewrite([_sse(events)])
    assert _read(body, 0) == ("2 + 2 = 4.", "User asks.")
    assert _read(body, 1) == ("Four.", "")


def test_an_answer_the_engine_parsed_passes_byte_for_byte() -> None:
    parsed = _sse(
        [
            _event({"role": "assistant", "content": None}),
            _event({"reasoning_content": "User asks."}),
            _event({"content": "2 + 2"}),
            _event({"content": " = 4. <b>1 < 2</b>"}),
            _event({}, "stop"),
        ]
    )
    for i in range(len(parsed) + 1):
        assert _rewrite([parsed[:i], parsed[i:]]) == parsed


def test_reasoning_is_added_after_the_engines_own() -> None:
    body = _sse(
        [
            _event(
                {"reasoning_content": "Engine's. ", "content": "<|channel|>analysis<|message|>Mine"}
            )
        ]
    )
    events = _events(_rewrite([body]))
    assert events[0]["choices"][0]["delta"] == {
        "reasoning_content": "Engine's. Mine",
        "content": "",
    }


def test_what_a_cut_stream_held_comes_out_before_its_end() -> None:
    tokens = ["<|channel|>", "final", "<|message|>", "1 <"]
    assert _read(_rewrite([_stream(tokens, finish=False)])) == ("1 <", "")  # before [DONE]
    cut = _rewrite([_stream(tokens, finish=False, done=False)])  # not even a [DONE]
    assert _read(cut) == ("1 <", "")
    assert not cut.endswith(b"[DONE]\n\n")


def test_a_json_answer_is_cleaned_and_an_error_or_a_clean_one_passes_unchanged() -> None:
    answer = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": FULL}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }
    out = orjson.loads(_rewrite([orjson.dumps(answer, option=orjson.OPT_INDENT_2)]))
    message = out["choices"][0]["message"]
    assert message["content"] == "2 + 2 = 4."
    assert message["reasoning_content"] == 'User asks: "What is 2 + 2?" Simple.'
    assert out["usage"] == answer["usage"]
    clean = b'{"choices": [{"message": {"content": "4", "reasoning_content": "sum"}}]}'
    error = b'{"error":{"message":"<|start|> is no model","code":400}}'
    for body in (clean, error):
        assert _rewrite([body[:9], body[9:]]) == body


# Through the real forward: an upstream in this process, one piece per read of the proxy.


class Pieces:
    """The upstream's answer in pieces; each piece goes once the last one has been read."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.kind = "text/event-stream"
        self.read = asyncio.Semaphore(0)
        self.lockstep = True  # else all at once: a client that reads the answer whole


def _app(up: Pieces) -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": up.kind})
        await resp.prepare(request)
        for i, piece in enumerate(up.pieces):
            if i and up.lockstep:
                await asyncio.wait_for(up.read.acquire(), WAIT)
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_post("/v1/completions", answer)
    app.router.add_get("/v1/models", models)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Pieces, str]]:
    up = Pieces()
    runner = web.AppRunner(_app(up))
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield up, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        await runner.cleanup()


def _awkward(data: bytes) -> list[bytes]:
    """``data`` cut inside tags, inside JSON, across events, inside ``[DONE]``."""
    at = data.index(b"<|message|>")
    cuts = {
        data.index(b"<|channel|>") + 4,  # inside the first tag
        data.index(b'"delta"') + 3,  # inside an event's JSON
        data.index(b"\n\n", at) + 1,  # between an event's two newlines
        data.index(b"<|end|>") + 2,
        data.index(b"assistant", at) + 4,
        data.index(b"final") + 1,
        data.index(b"= 4.") + 1,
        data.index(b'"finish_reason":"stop"') + 5,
        data.index(b"[DONE]") + 3,
    }
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


async def _through(
    up: tuple[Pieces, str], pieces: list[bytes], *, stream: bool, rewrite: Rewriter | None,
    model: str | None = None,
) -> tuple[bytes, list[Result]]:  # fmt: skip
    stub, base = up
    stub.pieces = pieces
    results: list[Result] = []
    client = new_client()
    try:
        answer = await forward(
            client,
            Upstream(base_url=base, model=model),
            "/chat/completions",
            b"{}",
            stream=stream,
            asked_model="gpt-oss",
            headers={},
            limits=Limits(connect=WAIT, first_byte=WAIT, idle=WAIT),
            done=results.append,
            rewrite=rewrite,
        )
        if not stream:
            assert not isinstance(answer, ProxyStream)
            return bytes(answer.body), results
        assert isinstance(answer, ProxyStream)
        got = []
        async with asyncio.timeout(WAIT):
            async for chunk in answer.chunks():
                got.append(chunk)
                stub.read.release()  # the next piece goes only now
        assert len(got) >= len(pieces)  # each piece came on a read of its own
        return b"".join(got), results
    finally:
        await client.close()


async def test_a_client_gets_a_harmony_stream_clean(upstream: tuple[Pieces, str]) -> None:
    pieces = _awkward(HARMONY)
    assert len(pieces) == 10 and any(b"<|" in p and b"|>" not in p for p in pieces)
    body, results = await _through(upstream, pieces, stream=True, rewrite=HarmonyStream())
    assert _read(body) == ("2 + 2 = 4.", "User asks.")
    assert body == _rewrite([HARMONY])  # the same as with the stream in one piece
    assert [(r.status, r.error, r.tokens_out) for r in results] == [(200, None, len(TOKENS))]


async def test_a_stream_without_the_rewrite_passes_byte_for_byte(
    upstream: tuple[Pieces, str],
) -> None:
    body, results = await _through(upstream, _awkward(HARMONY), stream=True, rewrite=None)
    assert body == HARMONY
    assert [(r.status, r.tokens_out) for r in results] == [(200, len(TOKENS))]


async def test_harmony_and_a_renamed_model_go_together(upstream: tuple[Pieces, str]) -> None:
    body, _ = await _through(
        upstream, _awkward(HARMONY), stream=True, rewrite=HarmonyStream(), model="upstream-name"
    )
    assert _read(body) == ("2 + 2 = 4.", "User asks.")
    assert b"upstream-name" not in body
    assert {e["model"] for e in _events(body)} == {"gpt-oss"}


async def test_a_json_answer_through_forward_is_cleaned(upstream: tuple[Pieces, str]) -> None:
    upstream[0].kind = "application/json"
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": FULL}}]}
    data = orjson.dumps(answer)
    body, results = await _through(upstream, [data], stream=False, rewrite=HarmonyStream())
    message = orjson.loads(body)["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == (
        "2 + 2 = 4.",
        'User asks: "What is 2 + 2?" Simple.',
    )
    assert [r.status for r in results] == [200]


# Through the whole gateway in this process: dispatch hands the rewriter to a Harmony
# model's chat answers only.


@contextlib.asynccontextmanager
async def _gateway(base: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = parse_config(
        f"state_dir: {tmp_path / 'state'}\n"
        "models:\n"
        f"  gpt-oss: {{engine: remote, url: '{base}', harmony: true}}\n"
        f"  plain: {{engine: remote, url: '{base}'}}\n",
        str(tmp_path / "modelyard.yaml"),
        {},
    )
    assert config.models["gpt-oss"].harmony and not config.models["plain"].harmony
    app = create_app(config)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    life = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), WAIT))["type"] == "lifespan.startup.complete"
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw/v1") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(outbox.get(), WAIT)
        await asyncio.wait_for(life, WAIT)


async def test_the_gateway_cleans_a_harmony_models_chat_answers_only(
    upstream: tuple[Pieces, str], tmp_path: Path
) -> None:
    stub, base = upstream
    stub.lockstep = False
    stub.pieces = _awkward(HARMONY)
    chat = {"messages": [{"role": "user", "content": "2 + 2?"}], "stream": True}
    async with _gateway(base, tmp_path) as gw:
        answer = await gw.post("/chat/completions", json={**chat, "model": "gpt-oss"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-modelyard-model"] == "gpt-oss"
        assert _read(answer.content) == ("2 + 2 = 4.", "User asks.")
        plain = await gw.post("/chat/completions", json={**chat, "model": "plain"})
        assert plain.content == HARMONY
        raw = {"prompt": "<|start|>user<|message|>2 + 2?<|end|><|start|>assistant", "stream": True}
        text = await gw.post("/completions", json={**raw, "model": "gpt-oss"})
        assert text.status_code == 200 and text.content == HARMONY  # its client parses it
        # The official SDK's view of it: reasoning_content is an extra field of the delta.
        sdk = openai.AsyncOpenAI(api_key="none", base_url="http://gw/v1", http_client=gw)
        content, reasoning = [], []
        stream = await sdk.chat.completions.create(
            model="gpt-oss", messages=[{"role": "user", "content": "2 + 2?"}], stream=True
        )
        async for chunk in stream:
            for choice in chunk.choices:
                content.append(choice.delta.content or "")
                reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
        assert ("".join(content), "".join(reasoning)) == ("2 + 2 = 4.", "User asks.")
