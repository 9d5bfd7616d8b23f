"""Timeouts of one request: the model's own limits and the client's deadline.

Each model has three limits on an upstream request (``timeouts`` in the config):
``connect``, ``first_byte`` (from sending the request to the first byte of the answer; for
an answer that is not streamed, the whole answer) and ``idle`` (the longest silence inside a
streamed answer).

A client may also say how long it will wait: ``x-modelyard-timeout: SECONDS``, or, for an
answer that is not streamed, the read timeout the OpenAI SDKs send
(``x-stainless-read-timeout``; a streamed answer keeps that one alive with comments). Past
that deadline nobody reads the answer, so the gateway stops waiting, aborts the upstream
request and tries no other candidate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from modelyard.config import Config

DEADLINE_HEADERS = ("x-modelyard-timeout", "x-stainless-read-timeout")


@dataclass(frozen=True)
class Limits:
    """What one upstream request may take; ``first_byte_why`` names what set that limit."""

    connect: float
    first_byte: float
    idle: float
    first_byte_why: str = "timeouts.first_byte"


class Deadline:
    """When the client stops waiting for the first byte, if it said so."""

    def __init__(self, headers: Mapping[str, str], stream: bool, began: float) -> None:
        self.at: float | None = None
        self.source = ""
        for name in DEADLINE_HEADERS:
            if name == "x-stainless-read-timeout" and stream:
                continue  # keep-alive comments reset a streaming client's read timeout
            value = headers.get(name)
            if value is None:
                continue
            try:
                seconds = float(value)
            except ValueError:
                continue  # a malformed hint is no deadline; the model's limits still hold
            if seconds > 0:
                self.at, self.source = began + seconds, f"{name}: {value}"
                break

    def left(self) -> float | None:
        """Seconds until the deadline, None without one (never below 0)."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    def passed(self) -> bool:
        # Timers may fire a hair early: what is left below 10 ms counts as gone.
        return self.at is not None and time.monotonic() >= self.at - 0.01

    def bound(self, wait: float) -> tuple[float, bool]:
        """``wait`` cut to the deadline, and whether the deadline is what cut it."""
        left = self.left()
        return (wait, False) if left is None or left >= wait else (left, True)

    def why(self) -> str:
        return f"the client's deadline ({self.source})"


def limits_for(config: Config, model: str, deadline: Deadline) -> Limits:
    """The limits of one request to ``model``: its timeouts, cut to the client's deadline."""
    mine = config.models[model].timeouts
    unset = mine.connect is None and mine.first_byte is None and mine.idle is None
    own = config.timeouts if unset else config.timeouts.over(mine)
    first_byte, cut = deadline.bound(own.first_byte)
    why = deadline.why() if cut else "timeouts.first_byte"
    return Limits(own.connect, first_byte, own.idle, why)
