"""The Wyoming listener end to end: a real gateway (``modelyard serve``) with a speech model
and a transcription model, spoken to with the ``wyoming`` package's own client, as Home
Assistant speaks to wyoming-piper and wyoming-faster-whisper."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    SENTENCE,
    ServedGateway,
    access_keys,
    alive,
    free_port,
    speech_models,
    wait_healthy,
    write_config,
)

pytest.importorskip("hibari")
pytest.importorskip("faster_whisper")
pytest.importorskip("wyoming")

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from modelyard.speech.formats import word_error_rate

MODELS = speech_models()
HOME, OPS = "sk-home-wyoming-1", "sk-ops-wyoming-1"
KEYS = access_keys(("home", HOME, "models: [voice, ears]"), ("ops", OPS, "scopes: [admin]"))


@dataclass
class Served:
    gw: ServedGateway
    port: int  # the Wyoming listener's

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port, connect_timeout=10, read_timeout=120)

    def requests(self, **filters: Any) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in {"limit": 200, **filters}.items())
        found: list[dict[str, Any]] = self.gw.admin("GET", f"/admin/requests?{query}").json()[
            "requests"
        ]
        return found

    def wait_requests(self, n: int, **filters: Any) -> list[dict[str, Any]]:
        """At least ``n`` rows of the request log match: it is written in batches."""
        deadline = time.monotonic() + 15
        while len(rows := self.requests(**filters)) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rows) >= n, f"{len(rows)} rows match {filters}, not {n}: {rows}"
        return rows


def start(config: Path, log: Path) -> ServedGateway:
    """``modelyard serve`` on ``config``, as tests/conftest.py's ``serve`` starts it."""
    import yaml

    listen = yaml.safe_load(config.read_text())["listen"]
    command = [sys.executable, "-m", "modelyard", "serve", "-c", str(config)]
    proc = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    gw = ServedGateway(proc, f"http://{listen}", config, log, key=OPS)
    try:
        wait_healthy(gw.url, proc, lambda: f"gateway: {log.read_text()}")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return gw


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One gateway for the module: its workers start once (a few seconds each)."""
    tmp = tmp_path_factory.mktemp("wyoming")
    port = free_port()
    config = write_config(tmp, MODELS)
    with config.open("a", encoding="utf-8") as f:
        f.write(KEYS + f"wyoming:\n  listen: 127.0.0.1:{port}\n  tts: voice\n  voice: heart\n"
                "  stt: ears\n  key: home\n")  # fmt: skip
    gw = start(config, tmp / "gateway.log")
    yield Served(gw, port)
    engines = gw.engines()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.proc.wait(60)
    finally:
        gw.proc.kill()
    log = gw.log.read_text()
    # The listener closed with the gateway, with nothing left over to complain about.
    assert "Application shutdown complete." in log and "Traceback" not in log, log
    deadline = time.monotonic() + 15
    while (leaked := [pid for pid in engines if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leaked, f"engine processes outlived the gateway: {leaked}"


async def speak(served: Served, text: str, voice: str | None = "heart") -> list[Event]:
    """Synthesize ``text``; every event up to AudioStop or an Error."""
    async with served.client() as client:
        asked = SynthesizeVoice(name=voice) if voice else None
        await client.write_event(Synthesize(text=text, voice=asked).event())
        events = []
        while (event := await client.read_event()) is not None:
            events.append(event)
            if AudioStop.is_type(event.type) or Error.is_type(event.type):
                break
        return events


async def hear(served: Served, chunks: list[AudioChunk], language: str = "en") -> Event | None:
    """Transcribe ``chunks``: Transcribe, AudioStart, AudioChunk..., AudioStop; the answer."""
    first = chunks[0]
    async with served.client() as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(first.rate, first.width, first.channels).event())
        for chunk in chunks:
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        answer: Event | None = await client.read_event()
        return answer


def audio_of(events: list[Event]) -> list[AudioChunk]:
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop", kinds[:3] + kinds[-3:]
    assert set(kinds[1:-1]) == {"audio-chunk"}, set(kinds)
    start = AudioStart.from_event(events[0])
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert {(c.rate, c.width, c.channels) for c in chunks} == {
        (start.rate, start.width, start.channels)
    }
    return chunks


def seconds(chunks: list[AudioChunk]) -> float:
    return sum(c.seconds for c in chunks)


async def test_describe_lists_the_voice_and_the_transcriber(served: Served) -> None:
    async with served.client() as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
    assert event is not None and Info.is_type(event.type), event
    info = Info.from_event(event)
    assert [p.name for p in info.tts] == ["modelyard"]
    voices = info.tts[0].voices
    assert "heart" in [v.name for v in voices], voices
    assert all(v.installed and v.languages == ["en"] for v in voices), voices
    assert [m.name for p in info.asr for m in p.models] == ["ears"]
    assert info.asr[0].installed and info.asr[0].models[0].languages == ["en"]


async def test_speech_round_trip(served: Served) -> None:
    chunks = audio_of(await speak(served, SENTENCE))
    assert chunks[0].rate == 24000 and chunks[0].width == 2 and chunks[0].channels == 1
    assert 1.5 <= seconds(chunks) <= 6, f"{seconds(chunks):.2f} s of audio for {SENTENCE!r}"
    assert all(c.samples <= 1024 for c in chunks)  # streamed in small chunks, as piper does
    answer = await hear(served, chunks, language="en-US")
    assert answer is not None and Transcript.is_type(answer.type), answer
    text = Transcript.from_event(answer).text
    wer = word_error_rate(SENTENCE, text)
    print(f"\nwyoming round trip: {seconds(chunks):.2f} s of audio, heard {text!r}, WER {wer:.2f}")
    assert wer <= 0.25, f"word error rate {wer:.2f} over 0.25: heard {text!r}"

    # Each went through the gateway's request path, as the listener's key.
    speech = served.wait_requests(1, model="voice", status=200)
    heard = served.wait_requests(1, model="ears", status=200)
    assert {r["key"] for r in speech + heard} == {"home"}
    assert speech[0]["endpoint"].endswith("/audio/speech"), speech[0]
    assert heard[0]["endpoint"].endswith("/audio/transcriptions"), heard[0]


async def test_unknown_voice_is_an_error_with_the_gateways_message(served: Served) -> None:
    events = await speak(served, SENTENCE, voice="nobody")
    assert [e.type for e in events] == ["error"], events
    error = Error.from_event(events[0])
    assert "nobody" in error.text and "heart" in error.text, error
    assert served.wait_requests(1, model="voice", status=400)[0]["key"] == "home"


async def test_clients_that_leave(served: Served) -> None:
    # Audio sent and the connection dropped before AudioStop: nothing to transcribe.
    chunk = AudioChunk(16000, 2, 1, bytes(3200))
    before = len(served.requests(model="ears"))
    async with served.client() as client:
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStart(16000, 2, 1).event())
        for _ in range(20):
            await client.write_event(chunk.event())

    # Gone mid-synthesis: the listener closes its request, so the worker stops.
    long = " ".join([SENTENCE, "She sells seashells by the seashore."] * 12)
    async with served.client() as client:
        await client.write_event(Synthesize(text=long).event())
        first = await client.read_event()
        assert first is not None and AudioStart.is_type(first.type), first
    gone = served.wait_requests(1, model="voice", status=499)
    assert gone[0]["error"] == "client went away" and gone[0]["key"] == "home", gone[0]

    # The next round trip works; the dropped upload never reached the gateway.
    chunks = audio_of(await speak(served, SENTENCE, voice=None))  # wyoming.voice: heart
    answer = await hear(served, chunks)
    assert answer is not None and Transcript.is_type(answer.type), answer
    text = Transcript.from_event(answer).text
    assert word_error_rate(SENTENCE, text) <= 0.25, text
    assert len(served.wait_requests(before + 1, model="ears")) == before + 1


async def test_too_much_audio_is_refused(served: Served) -> None:
    # 25 MiB of silence at 48 kHz stereo is about 136 s; the listener answers an Error
    # once past it and hangs up, rather than keeping whatever comes.
    second = AudioChunk(48000, 2, 2, bytes(48000 * 4))
    client = served.client()
    await client.connect()
    await client.write_event(AudioStart(48000, 2, 2).event())
    events: list[Event] = []

    async def read() -> None:
        with contextlib.suppress(ConnectionError):  # the hang-up, with audio still coming
            while (event := await client.read_event()) is not None:
                events.append(event)

    reader = asyncio.create_task(read())
    with contextlib.suppress(ConnectionError):
        for _ in range(140):
            if reader.done():
                break
            await client.write_event(second.event())
    await asyncio.wait_for(reader, 30)
    with contextlib.suppress(ConnectionError):
        await client.disconnect()
    assert [e.type for e in events] == ["error"], events
    assert "over 26214356 bytes" in Error.from_event(events[0]).text, events[0]


def test_a_port_in_use_stops_the_gateway_with_its_address(
    served: Served, serve: Callable[[Path], ServedGateway], tmp_path: Path
) -> None:
    config = write_config(tmp_path, MODELS)
    with config.open("a", encoding="utf-8") as f:
        f.write(f"wyoming:\n  listen: 127.0.0.1:{served.port}\n  tts: voice\n")
    with pytest.raises(AssertionError, match=f"cannot listen on 127.0.0.1:{served.port}"):
        serve(config)


async def _said(port: int, data: bytes) -> bytes:
    """What the listener answers to ``data`` before it closes the connection (10 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:  # closed with our bytes unread: a reset, as TCP does
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    "data",
    [
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'{"type": "synthesize", "data_length": 99999999}\n',  # would be kept whole
        b'{"type": "audio-chunk", "payload_length": -5}\n',
        b'{"type": "audio-chunk", "payload_length": "many"}\n',
        b"x" * 200_000 + b"\n",  # a line past the reader's limit
        b'{"type": "audio-start", "data": {}}\n',  # no rate, width, channels
        b'{"type": "synthesize", "data_length": 5}\nnope!',
    ],
)
async def test_hostile_bytes_close_the_connection_and_harm_nothing(
    served: Served, data: bytes
) -> None:
    answer = await _said(served.port, data)
    assert len(answer) < 2000  # at most one Error event, then closed
    # The listener and the gateway go on: a describe on a new connection is answered.
    async with served.client() as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
    assert event is not None and Info.is_type(event.type), event
    assert "heart" in [v.name for v in Info.from_event(event).tts[0].voices]
