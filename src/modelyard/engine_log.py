"""An engine's output: its last lines in memory, a rotated file, and live followers.

One ``InstanceLog`` per model and node, kept across the model's restarts (the supervisor
holds it by the model's name): whoever follows it sees the next start's lines as they come.

A *follower* is a bounded buffer of the new lines, read at its own pace (``GET
/admin/models/NAME/logs?follow=1``, on the gateway and on an agent). Writing a line to it
never waits: one that falls more than its buffer behind loses its oldest lines and is told
how many (``Lost``), so a slow reader never slows the reading of the engine's output. A
closed follower is dropped from the log.

The stream's wire form is Server-Sent Events, written by ``sse_stream`` and read back by
``parse_sse`` (a gateway relaying an agent's stream): ``data: LINE`` per line, ``event:
lost`` with ``data: COUNT``, and a comment (``: keep-alive``) after ``QUIET`` seconds of
nothing.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from modelyard.errors import NOTE
from modelyard.mailbox import Dropped, Mailbox

LOG_LINES = 2000  # kept in memory per instance for `modelyard logs`
LOG_FILE_BYTES = 5 * 1024 * 1024  # each instance's log file is rotated past this
FOLLOW_BUFFER = 1000  # lines a follower keeps unread before it drops the oldest
QUIET = 15.0  # seconds of no line before a keep-alive comment
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SSE_HEAD = b"retry: 3000\n: modelyard engine log\n\n"


@dataclass(frozen=True, slots=True)
class Lost:
    """A follower fell behind: ``count`` lines were dropped before the next one."""

    count: int


# A line, lines lost, or None: nothing new for a while (the stream is open: a keep-alive).
LogItem = str | Lost | None


class LogFollower(Mailbox[str]):
    """The new lines of one ``InstanceLog``, at most ``size`` unread, read with ``next``;
    ``end()`` when the log is closed (the gateway or agent is shutting down)."""

    def __init__(self, log: InstanceLog, size: int) -> None:
        super().__init__(size)
        self._log = log

    async def next(self, timeout: float | None = None) -> LogItem:
        """The next line, a ``Lost`` if lines were dropped since the last read, or None
        after ``timeout`` seconds with nothing new (at once once the log has ended)."""
        got = await self.get(timeout)
        return Lost(got.count) if isinstance(got, Dropped) else got

    def close(self) -> None:
        self._log.unfollow(self)


class InstanceLog:
    """The last lines of an engine's output, in memory and in a rotated file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self._followers: list[LogFollower] = []
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")

    def write(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\n")
        self.lines.append(text)
        for follower in self._followers:
            follower.put(text)
        self._file.write(line)
        if self._file.tell() > LOG_FILE_BYTES:
            self._file.close()
            os.replace(self.path, self.path.with_suffix(".log.1"))
            self._file = open(self.path, "ab")
        self._file.flush()

    def note(self, text: str) -> None:
        """A line from modelyard itself, marked so it stands out from the engine's."""
        self.write(f"{NOTE}{time.strftime('%H:%M:%S')}] {text}\n".encode())

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    def follow(self, size: int = FOLLOW_BUFFER) -> LogFollower:
        """A follower of the lines written from now on; ``close`` it when done."""
        follower = LogFollower(self, size)
        if self._closed:
            follower.end()
        else:
            self._followers.append(follower)
        return follower

    def unfollow(self, follower: LogFollower) -> None:
        if follower in self._followers:
            self._followers.remove(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)

    def close(self) -> None:
        self._closed = True
        for follower in self._followers:
            follower.end()
        self._followers.clear()
        self._file.close()


async def follow_lines(log: InstanceLog, lines: int) -> AsyncGenerator[LogItem, None]:
    """None (the stream is open), the last ``lines`` lines, then each new line as it is
    written, and None after each ``QUIET`` seconds of nothing; until the log closes.

    The follower is taken on the first ``anext`` and let go when the generator is closed
    (the client left: Starlette cancels the response's task)."""
    follower = log.follow()
    tail = log.tail(lines)  # at the same instant: no line is missed or sent twice
    try:
        yield None
        for line in tail:
            yield line
        while True:
            item = await follower.next(QUIET)
            if item is None and follower.ended:
                return
            yield item
    finally:
        follower.close()


def follow_asked(value: str | None) -> bool:
    """Whether ``?follow=`` asks for a live stream (``1``, ``true``, ``yes``, ``on``)."""
    return (value or "").lower() in ("1", "true", "yes", "on")


LINES_WANTED = f"`lines` must be a whole number from 1 to {LOG_LINES}, e.g. ?lines=200"


def log_query(query: Mapping[str, str]) -> tuple[bool, int | None]:
    """What a logs request asks (on the gateway and on an agent): whether to follow, and
    how many of the last lines (default 100 to follow, else 200); None: not 1..LOG_LINES
    (answer ``LINES_WANTED``)."""
    follow = follow_asked(query.get("follow"))
    try:
        lines = int(query.get("lines", "100" if follow else "200"))
    except ValueError:
        return follow, None
    return follow, lines if 1 <= lines <= LOG_LINES else None


def shown(line: str) -> str:
    """A line as a terminal leaves it: a progress bar's ``\\r`` rewrites keep the last one
    (and SSE reads a ``\\r`` as the end of a line)."""
    if "\r" not in line:
        return line
    return next((part for part in reversed(line.split("\r")) if part), "")


def sse(item: LogItem) -> bytes:
    if item is None:
        return b": keep-alive\n\n"
    if isinstance(item, Lost):
        return b"event: lost\ndata: %d\n\n" % item.count
    return b"data: " + shown(item).encode("utf-8", "replace") + b"\n\n"


async def sse_stream(items: AsyncGenerator[LogItem, None]) -> AsyncGenerator[bytes, None]:
    """A log stream as SSE (after its first item: the caller opened it); closes ``items``
    when done, and so when the response's task is cancelled."""
    try:
        yield SSE_HEAD
        async for item in items:
            yield sse(item)
    finally:
        await items.aclose()


async def parse_sse(chunks: AsyncIterator[bytes], limit: int = 1 << 20) -> AsyncIterator[LogItem]:
    """The items of a stream ``sse_stream`` wrote, from its bytes as they arrive; a comment
    is None. Raises ValueError on a line longer than ``limit`` bytes."""
    pending = bytearray()
    kind = ""
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            if len(pending) > limit:
                raise ValueError(f"a log stream line longer than {limit} bytes")
            continue
        *complete, rest = bytes(pending).split(b"\n")
        pending = bytearray(rest)
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            if line.startswith(":"):
                yield None
            elif line.startswith("event:"):
                kind = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = line.removeprefix("data:").removeprefix(" ")
                yield Lost(int(data or 0)) if kind == "lost" else data
            elif not line:
                kind = ""
