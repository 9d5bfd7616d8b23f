"""Following an engine log: a follower is a bounded buffer that never slows the engine's
output, tells a slow reader what it lost, and leaves the log when it is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from modelyard.engine_log import (
    SSE_HEAD,
    InstanceLog,
    Lost,
    follow_asked,
    follow_lines,
    parse_sse,
    sse,
    sse_stream,
)
from modelyard.supervisor import Supervisor


def _write(log: InstanceLog, *lines: str) -> None:
    for line in lines:
        log.write(line.encode() + b"\n")


async def test_a_follower_gets_the_lines_written_after_it_came_in_order(tmp_path: Path) -> None:
    log = InstanceLog(tmp_path / "m.log")
    _write(log, "before")
    follower = log.follow()
    assert log.followers == 1
    _write(log, "one", "two")
    assert [await follower.next(1), await follower.next(1)] == ["one", "two"]
    assert await follower.next(0.01) is None  # nothing new: None after the timeout
    reader = asyncio.ensure_future(follower.next(5))
    await asyncio.sleep(0.01)
    log.note("ready")  # modelyard's own lines reach followers too
    line = await asyncio.wait_for(reader, 1)
    assert isinstance(line, str) and line.endswith("ready")
    follower.close()
    log.close()


async def test_a_follower_that_never_reads_holds_only_its_buffer_and_is_told_what_it_lost(
    tmp_path: Path,
) -> None:
    log = InstanceLog(tmp_path / "m.log")
    slow = log.follow(size=10)
    for i in range(10_000):  # never waits for the reader: the engine's output goes on
        log.write(b"line %d\n" % i)
    assert slow.held == 10
    assert await slow.next(1) == Lost(9_990)
    rest = [await slow.next(1) for _ in range(10)]
    assert rest == [f"line {i}" for i in range(9_990, 10_000)]
    assert await slow.next(0.01) is None
    log.write(b"after\n")  # and it goes on following after the loss
    assert await slow.next(1) == "after"
    assert log.tail(1) == ["after"] and (tmp_path / "m.log").read_bytes().endswith(b"after\n")
    slow.close()
    log.close()


async def test_a_closed_follower_leaves_the_log_and_gets_nothing_more(tmp_path: Path) -> None:
    log = InstanceLog(tmp_path / "m.log")
    a, b = log.follow(), log.follow()
    assert log.followers == 2
    a.close()
    a.close()  # twice is harmless
    assert log.followers == 1
    _write(log, "x")
    assert not a.held and await b.next(1) == "x"
    b.close()
    assert log.followers == 0
    log.close()


async def test_follow_lines_sends_the_tail_then_new_lines_and_lets_go_when_closed(
    tmp_path: Path,
) -> None:
    log = InstanceLog(tmp_path / "m.log")
    _write(log, "a", "b", "c")
    stream = follow_lines(log, 2)
    assert log.followers == 0  # nothing is taken before the stream is opened
    assert await anext(stream) is None  # opened: following from this instant
    assert log.followers == 1
    _write(log, "d")
    assert [await anext(stream) for _ in range(3)] == ["b", "c", "d"]
    await stream.aclose()
    assert log.followers == 0
    log.close()


async def test_a_cancelled_reader_leaves_no_follower(tmp_path: Path) -> None:
    """What happens when a client leaves: Starlette cancels the task reading the stream."""
    log = InstanceLog(tmp_path / "m.log")

    async def read() -> None:
        stream = follow_lines(log, 10)
        await anext(stream)  # opened, as the handlers do before they answer
        async for _ in sse_stream(stream):
            pass

    task = asyncio.ensure_future(read())
    await asyncio.sleep(0.05)
    assert log.followers == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert log.followers == 0
    log.close()


async def test_closing_the_log_ends_its_followers(tmp_path: Path) -> None:
    log = InstanceLog(tmp_path / "m.log")
    stream = follow_lines(log, 10)
    assert await anext(stream) is None
    _write(log, "last")
    log.close()  # the gateway or agent shuts down
    assert [item async for item in stream] == ["last"]
    assert log.followers == 0
    assert await log.follow().next(0.01) is None  # following a closed log ends at once


async def test_the_supervisor_keeps_one_log_per_model_across_restarts(tmp_path: Path) -> None:
    """A follower of a model stays on through a restart: the next start writes to the same
    log (``Supervisor.log`` is keyed by the model's name)."""
    sup = Supervisor(tmp_path / "logs", lambda model, code: None)
    follower = sup.log("org/model:q4").follow()
    sup.log("org/model:q4").note("starting again")
    line = await follower.next(1)
    assert isinstance(line, str) and line.endswith("starting again")
    follower.close()
    await sup.close()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_the_sse_form_reads_back_whatever_the_chunks() -> None:
    items = [None, "plain", "", "  indented", "é ünïcode", Lost(7), "after"]
    wire = SSE_HEAD + b"".join(sse(item) for item in items)
    assert b"data: plain\n\n" in wire and b"event: lost\ndata: 7\n\n" in wire
    for size in (1, 3, 64, len(wire)):
        got = [item async for item in parse_sse(_chunks(wire, size))]
        assert got == [None, *items], size  # the head's comment reads as None too


async def test_carriage_returns_do_not_break_the_stream() -> None:
    """A progress bar rewrites its line with ``\\r``; SSE would read it as a line's end."""
    wire = sse("10%\r50%\r100%") + sse("done\r")
    assert wire == b"data: 100%\n\ndata: done\n\n"
    assert [item async for item in parse_sse(_chunks(wire, 5))] == ["100%", "done"]


async def test_a_stream_line_past_the_limit_is_an_error() -> None:
    try:
        [item async for item in parse_sse(_chunks(b"data: " + b"x" * 100, 10), limit=50)]
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_follow_is_asked_with_the_usual_words() -> None:
    assert all(follow_asked(v) for v in ("1", "true", "yes", "on", "True"))
    assert not any(follow_asked(v) for v in (None, "", "0", "false", "no"))
