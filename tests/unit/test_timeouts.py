"""A request's limits: the model's timeouts, cut to the client's own deadline."""

from __future__ import annotations

import pytest

from modelyard.config import parse_config
from modelyard.gateway.timeouts import Deadline, limits_for

CONFIG = parse_config(
    "timeouts: {first_byte: 60s}\nmodels:\n"
    "  a: {engine: remote, url: 'https://a/v1', timeouts: {first_byte: 5s, idle: 9s}}\n"
    "  b: {engine: remote, url: 'https://b/v1'}\n",
    "t.yaml",
    {},
)


@pytest.mark.parametrize(
    ("headers", "stream", "at", "source"),
    [
        pytest.param({}, False, None, "", id="no header: no deadline"),
        pytest.param(
            {"x-modelyard-timeout": "2.5"},
            False,
            102.5,
            "x-modelyard-timeout: 2.5",
            id="modelyard's own header",
        ),
        pytest.param(
            {"x-stainless-read-timeout": "30.0"},
            False,
            130.0,
            "x-stainless-read-timeout: 30.0",
            id="the OpenAI SDK's read timeout, answer not streamed",
        ),
        pytest.param(
            {"x-stainless-read-timeout": "30.0"},
            True,
            None,
            "",
            id="the SDK's read timeout does not bound a stream (keep-alive resets it)",
        ),
        pytest.param(
            {"x-modelyard-timeout": "4", "x-stainless-read-timeout": "30"},
            True,
            104.0,
            "x-modelyard-timeout: 4",
            id="an explicit deadline bounds a stream too, and wins",
        ),
        pytest.param({"x-modelyard-timeout": "soon"}, False, None, "", id="malformed: ignored"),
        pytest.param({"x-modelyard-timeout": "-1"}, False, None, "", id="negative: ignored"),
    ],
)
def test_deadline_from_headers(
    headers: dict[str, str], stream: bool, at: float | None, source: str
) -> None:
    d = Deadline(headers, stream, 100.0)
    assert (d.at, d.source) == (at, source)


def test_limits_are_the_models_then_the_top_levels() -> None:
    none = Deadline({}, False, 0.0)
    a = limits_for(CONFIG, "a", none)
    assert (a.connect, a.first_byte, a.idle, a.first_byte_why) == (
        10.0,
        5.0,
        9.0,
        "timeouts.first_byte",
    )
    b = limits_for(CONFIG, "b", none)
    assert (b.connect, b.first_byte, b.idle) == (10.0, 60.0, 120.0)


def test_the_clients_deadline_cuts_first_byte_and_says_so() -> None:
    import time

    soon = Deadline({"x-modelyard-timeout": "2"}, False, time.monotonic())
    limits = limits_for(CONFIG, "b", soon)
    assert 1.5 < limits.first_byte <= 2.0
    assert limits.first_byte_why == "the client's deadline (x-modelyard-timeout: 2)"
    later = Deadline({"x-modelyard-timeout": "300"}, False, time.monotonic())
    assert limits_for(CONFIG, "a", later).first_byte == 5.0  # the model's own limit is lower
    assert not later.passed()
    assert Deadline({"x-modelyard-timeout": "1"}, False, time.monotonic() - 5).passed()
