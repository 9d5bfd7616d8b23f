"""The Wyoming listener's own parts: the WAV stream it reads, the upload it builds, and the
listener itself in this process (Describe, refusals, binding, closing) on a real Gateway
that is never opened: none of this reaches a model."""

from __future__ import annotations

import asyncio
import email.parser
import io
import socket
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("wyoming")

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from modelyard.config import load_config
from modelyard.gateway.audio import form_field
from modelyard.gateway.inner import form_body
from modelyard.gateway.state import Gateway
from modelyard.gateway.wyoming import MAX_AUDIO, Upload, WyomingListener
from tests.conftest import free_port
from tests.unit.test_wav import PCM, wav_file


def test_upload_keeps_the_declared_format_and_makes_a_wav() -> None:
    upload = Upload(AudioStart(16000, 2, 1))
    upload.add(AudioChunk(16000, 2, 1, PCM))
    upload.add(AudioChunk(32000, 2, 1, PCM))  # twice the rate: resampled to half the bytes
    upload.add(AudioChunk(16000, 2, 2, PCM))  # stereo: mixed down to half the bytes
    assert abs(len(upload.pcm) - 2 * len(PCM)) <= 4
    assert upload.seconds == pytest.approx(len(upload.pcm) / 32000)
    with wave.open(io.BytesIO(upload.wav())) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
        assert w.readframes(10**6) == upload.pcm


def test_upload_is_bounded() -> None:
    assert MAX_AUDIO + 44 == 25 * 1024 * 1024  # the worker's limit, WAV header included
    upload = Upload(AudioStart(16000, 2, 1), limit=len(PCM) + 10)
    upload.add(AudioChunk(16000, 2, 1, PCM))
    with pytest.raises(ValueError, match=f"over {len(PCM) + 10} bytes"):
        upload.add(AudioChunk(16000, 2, 1, PCM[:12]))
    assert len(upload.pcm) == len(PCM)  # the chunk past the limit is not kept


@pytest.mark.parametrize(("rate", "width", "channels"), [(0, 2, 1), (16000, 5, 1), (16000, 2, 0)])
def test_upload_refuses_formats_that_are_not_audio(rate: int, width: int, channels: int) -> None:
    with pytest.raises(ValueError, match="unsupported audio"):
        Upload(AudioStart(rate, width, channels))


def test_form_body_is_a_form_the_gateway_reads() -> None:
    wav = wav_file(PCM)
    body, content_type = form_body(
        {"model": "ears", "language": "en"}, "audio.wav", wav, "audio/wav"
    )
    assert form_field(body, content_type, "model") == "ears"  # as the gateway routes it
    assert form_field(body, content_type, "language") == "en"
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = {p.get_param("name", header="content-disposition"): p for p in list(message.walk())[1:]}
    assert parts["file"].get_filename() == "audio.wav"
    assert parts["file"].get_content_type() == "audio/wav"
    assert parts["file"].get_payload(decode=True) == wav


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A real gateway, never opened: its config, no engines."""
    config = tmp_path / "m.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "models:\n  voice: {engine: speech, tts: hibari}\n"
        "  ears: {engine: speech, stt: whisper-tiny.en}\n"
        "  other: {engine: command, command: [/bin/false, '{port}'], serves: [speech]}\n"
        "access:\n  keys:\n    - {name: home, key: sk-home}\n"
    )
    gw = Gateway(load_config(config))
    yield gw
    gw.store.db.close()


def listener(gw: Gateway, **spec: str) -> WyomingListener:
    from modelyard.config import Wyoming

    return WyomingListener(gw, Wyoming(listen=f"127.0.0.1:{free_port()}", **spec))


def test_the_voice_asked_for(gateway: Gateway) -> None:
    named = listener(gateway, tts="voice", voice="heart", key="home")
    assert named.key is not None and named.key.name == "home"
    assert named.voice(None) == "heart" and named.voice("nobody") == "nobody"
    bare = listener(gateway, tts="voice")
    assert bare.voices() == ("heart",) and bare.voice(None) == "heart"
    assert bare.voice("default") == "default"  # a name like any other: the worker refuses it
    with pytest.raises(ValueError, match="no access key is named 'nobody'"):
        listener(gateway, tts="voice", key="nobody")


def test_a_model_that_lists_no_voices(gateway: Gateway) -> None:
    """Offered with one voice, "default", which asks for none: the worker picks or refuses."""
    bare = listener(gateway, tts="other")
    assert bare.voices() == () and [v.name for v in bare.info().tts[0].voices] == ["default"]
    assert bare.voice(None) is None and bare.voice("default") is None
    assert bare.voice("joe") == "joe"
    named = listener(gateway, tts="other", voice="joe")
    assert [v.name for v in named.info().tts[0].voices] == ["joe"]
    assert named.voice(None) == "joe" and named.voice("default") == "joe"


async def test_describe_and_refusals_without_a_model(gateway: Gateway) -> None:
    speaks = listener(gateway, tts="voice", voice="heart")
    await speaks.start()
    try:
        async with AsyncTcpClient(speaks.host, speaks.port, read_timeout=10) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
            assert event is not None and Info.is_type(event.type), event
            info = Info.from_event(event)
            assert "heart" in [v.name for v in info.tts[0].voices] and info.asr == []
            # It has no `stt`: audio sent to be transcribed is refused, once.
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(16000, 2, 1).event())
            await client.write_event(AudioChunk(16000, 2, 1, PCM).event())
            await client.write_event(Describe().event())
            error = await client.read_event()
            assert error is not None and Error.is_type(error.type), error
            assert "does not transcribe" in Error.from_event(error).text
            after = await client.read_event()
            assert after is not None and Info.is_type(after.type), after
    finally:
        await speaks.close()

    hears = listener(gateway, stt="ears")
    await hears.start()
    try:
        async with AsyncTcpClient(hears.host, hears.port, read_timeout=10) as client:
            await client.write_event(Synthesize(text="Hello.").event())
            error = await client.read_event()
            assert error is not None and Error.is_type(error.type), error
            assert "does not speak" in Error.from_event(error).text
    finally:
        await hears.close()


async def test_a_port_in_use_is_named(gateway: Gateway) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from modelyard.config import Wyoming

        blocked = WyomingListener(gateway, Wyoming(listen=f"127.0.0.1:{port}", tts="voice"))
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await blocked.start()
        await blocked.close()  # never started: nothing to do


async def test_close_ends_open_connections_and_frees_the_port(gateway: Gateway) -> None:
    up = listener(gateway, tts="voice", voice="heart")
    await up.start()
    clients = [AsyncTcpClient(up.host, up.port, read_timeout=10) for _ in range(3)]
    for client in clients:
        await client.connect()
        await client.write_event(Describe().event())
        assert await client.read_event() is not None
    assert len(up.handlers) == 3
    await asyncio.wait_for(up.close(), 10)
    assert up.handlers == set()
    for client in clients:
        assert await client.read_event() is None  # the listener hung up
        await client.disconnect()
    with socket.socket() as again:
        # As a server binds (connections it closed wait in TIME_WAIT): nothing listens.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((up.host, up.port))
        again.listen()
    await up.close()  # twice: no error
