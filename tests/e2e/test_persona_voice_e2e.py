"""A persona speaks and listens: a real gateway, the real speech worker (hibari, whisper),
and a chat model that streams a known reply slowly (tests/slow_upstream.py), so that
"speaking while it thinks" is seen in the order of the events."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ServedGateway, gateways, stub_log, stub_model, write_config

av = pytest.importorskip("av")
pytest.importorskip("hibari")
pytest.importorskip("faster_whisper")

from modelyard.speech.formats import word_error_rate  # noqa: E402

pytestmark = pytest.mark.e2e

REPLY = "The kettle is on. Your tea will be ready in four minutes. Shall I bring biscuits?"
QUESTION = "Please make me a cup of tea."


def config(tmp: Path) -> Path:
    reply = tmp / "reply.txt"
    reply.write_text(REPLY)
    models = stub_model("qwen", "--record", "--reply", f"'@{reply}'", aliases="[chat]") + (
        "  voice: {engine: speech, tts: hibari, start_timeout: 120s}\n"
        "  ears: {engine: speech, stt: whisper-tiny.en, threads: 2, start_timeout: 120s}\n"
        "personas:\n"
        "  jarvis: {use: chat, system: You are Jarvis., voice: voice, ears: ears}\n"
        "  mute: {use: chat}\n"
    )
    return write_config(tmp, models)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("voice")
    with gateways(tmp) as start:
        yield start(config(tmp))


def post(gw: ServedGateway, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(gw.url + path, timeout=180, **kw)


def duration(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return float(sum(f.samples for f in container.decode(stream)) / stream.rate)


def transcribe(gw: ServedGateway, wav: bytes) -> str:
    files = {"file": ("a.wav", wav, "audio/wav")}
    resp = post(gw, "/v1/audio/transcriptions", data={"model": "ears"}, files=files)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["text"])


def test_speak_says_text_in_the_persona_s_voice(gw: ServedGateway) -> None:
    resp = post(gw, "/v1/personas/jarvis/speak", json={"input": QUESTION, "response_format": "wav"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav"
    assert resp.headers["x-modelyard-model"] == "voice"
    assert 1.0 < duration(resp.content) < 6.0
    heard = transcribe(gw, resp.content)
    assert word_error_rate(QUESTION, heard) <= 0.2, heard


def test_listen_hears_answers_and_speaks(gw: ServedGateway) -> None:
    question = post(
        gw, "/v1/personas/jarvis/speak", json={"input": QUESTION, "response_format": "wav"}
    )
    files = {"file": ("q.wav", question.content, "audio/wav")}

    # Not speaking: the transcript and the answer, as JSON.
    resp = post(gw, "/v1/personas/jarvis/listen", files=files)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert word_error_rate(QUESTION, body["transcript"]) <= 0.2, body
    assert body["text"] == REPLY and "audio" not in body
    # The chat went to the model with the persona's prompt first and what was heard.
    sent = stub_log(gw, "qwen")["requests"][-1]["body"]["messages"]
    assert sent[0] == {"role": "system", "content": "You are Jarvis."}
    assert sent[1]["content"] == body["transcript"]

    # Speaking, JSON: the answer's audio too, which says the answer.
    resp = post(
        gw,
        "/v1/personas/jarvis/listen",
        files=files,
        data={"speak": "true", "stream_format": "json"},
    )
    assert resp.status_code == 200, resp.text
    spoken = base64.b64decode(resp.json()["audio"]["data"])
    assert 3.0 < duration(spoken) < 15.0
    heard = transcribe(gw, spoken)
    wer = word_error_rate(REPLY, heard)
    assert wer <= 0.25, f"word error rate {wer:.2f}: {heard!r}"

    # Speaking, streamed WAV (the default): one WAV stream, the transcript in a header.
    resp = post(gw, "/v1/personas/jarvis/listen", files=files, data={"speak": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav"
    assert "tea" in httpx.URL("?t=" + resp.headers["x-modelyard-transcript"]).params["t"]
    assert abs(duration(resp.content) - duration(spoken)) < 0.5


def test_speak_while_it_thinks(gw: ServedGateway) -> None:
    """Sentence by sentence: the first audio comes before the reply's text is all there."""
    ask = {"messages": [{"role": "user", "content": "tea?"}], "stream_format": "sse",
           "stub": {"gap": 0.15}}  # fmt: skip
    events: list[tuple[float, dict[str, Any]]] = []
    with httpx.stream("POST", gw.url + "/v1/personas/jarvis/speak", json=ask, timeout=180) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append((time.monotonic(), orjson.loads(line[6:])))
    kinds = [e["type"] for _, e in events]
    assert kinds[-1] == "done" and events[-1][1]["text"] == REPLY
    first_audio = kinds.index("speech.audio.delta")
    last_text = len(kinds) - 1 - kinds[::-1].index("text.delta")
    assert first_audio < last_text, kinds  # spoken before the reply was over
    assert kinds.index("speech.audio.format") < first_audio
    fmt = events[kinds.index("speech.audio.format")][1]
    assert (fmt["sample_rate"], fmt["channels"], fmt["bits"]) == (24000, 1, 16)
    pcm = b"".join(base64.b64decode(e["audio"]) for _, e in events if "audio" in e)
    assert len(pcm) / 2 / 24000 > 3.0
    # Each sentence was its own speech request, logged with the characters it spoke.
    rows = gw.admin("GET", "/admin/requests", params={"model": "voice", "limit": 50}).json()
    spoken = {r["chars"] for r in rows["requests"] if r["endpoint"] == "/audio/speech"}
    sentences = ["The kettle is on.", "Your tea will be ready in four minutes.",
                 "Shall I bring biscuits?"]  # fmt: skip
    assert {len(s) for s in sentences} <= spoken, spoken


@pytest.mark.parametrize(
    ("path", "kw", "status", "says"),
    [
        ("/v1/personas/ghost/speak", {"json": {"input": "hi"}}, 404, "persona 'ghost' does not"),
        ("/v1/personas/mute/speak", {"json": {"input": "hi"}}, 400, "has no voice"),
        ("/v1/personas/mute/listen", {"files": {"file": b"x"}}, 400, "has no ears"),
        ("/v1/personas/jarvis/speak", {"content": b"{"}, 400, "not valid JSON"),
        ("/v1/personas/jarvis/speak", {"json": {"messages": []}}, 400, "non-empty list"),
        ("/v1/personas/jarvis/speak", {"json": {"input": "hi", "voice": "alloy"}}, 400,
         "unknown voice 'alloy'"),
        ("/v1/personas/jarvis/listen", {"json": {"file": "x"}}, 400, "multipart/form-data"),
        ("/v1/personas/jarvis/listen", {"files": {"nofile": b"x"}}, 400, "`file`"),
        ("/v1/personas/jarvis/listen", {"files": {"file": b"not audio"}}, 400, "hearing"),
        ("/v1/personas/jarvis/listen", {"files": {"file": b"x"}, "data": {"stream_format": "mp3"}},
         400, "stream_format"),
    ],
)  # fmt: skip
def test_bad_requests_say_what_is_wrong(
    gw: ServedGateway, path: str, kw: dict[str, Any], status: int, says: str
) -> None:
    resp = post(gw, path, **kw)
    assert resp.status_code == status, resp.text
    assert says in resp.json()["error"]["message"], resp.text


def test_a_storm_of_clients_that_leave_leaks_nothing(gw: ServedGateway) -> None:
    """Spoken replies abandoned at every moment (before the first byte, mid-text, mid-audio)
    beside ones read to the end: afterwards no slot, lease or request is left held."""
    ask = {"messages": [{"role": "user", "content": "tea?"}], "stub": {"gap": 0.05}}
    done: list[int] = []

    def one(i: int) -> None:
        body = {**ask, "stream_format": ("sse", "audio", "json")[i % 3]}
        leave_after = (0, 1, 3, 8, None)[i % 5]  # chunks read before leaving; None: all
        try:
            with httpx.stream(
                "POST", gw.url + "/v1/personas/jarvis/speak", json=body, timeout=120
            ) as r:
                for n, _ in enumerate(r.iter_raw(256)):
                    if leave_after is not None and n >= leave_after:
                        return
                done.append(r.status_code)
        except httpx.HTTPError:
            pass  # a cut audio stream, or our own leaving

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert done and set(done) == {200}
    deadline = time.monotonic() + 30
    while True:
        status = gw.admin("GET", "/admin/status").json()
        busy = {m["name"]: m["in_flight"] for m in status["models"] if m["in_flight"]}
        if (not busy and not status["gpu_leases"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not busy, busy
    assert status["slot_audit"]["leaks_total"] == 0
    # The gateway still answers a whole spoken reply.
    resp = post(gw, "/v1/personas/jarvis/speak", json={**ask, "stream_format": "json"})
    assert resp.status_code == 200 and resp.json()["text"] == REPLY
