"""Doctor's checks of the remote nodes' agents, from the gateway's machine: each answers
``/agent/status`` with this config's token, and its clock agrees with this one's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from modelyard.config import Config, Node
from modelyard.doctor.result import Context, Result

AGENT_TIMEOUT = 3.0  # seconds an agent has to answer /agent/status
CLOCK_WARN_S = 3.0  # a skew beyond this (after the measure's own uncertainty) is warned of


@dataclass(frozen=True)
class AgentProbe:
    """One ``GET /agent/status``: its answer or why none came, and when (this clock)."""

    node: str
    url: str
    status: int | None
    error: str | None
    body: Any
    date: str | None
    sent: float
    received: float


async def _probe(client: httpx.AsyncClient, node: str, spec: Node) -> AgentProbe:
    assert spec.url is not None
    url = spec.url.rstrip("/")
    headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else {}
    sent = time.time()
    try:
        resp = await client.get(f"{url}/agent/status", headers=headers)
    except httpx.TimeoutException:
        return AgentProbe(node, url, None, "timeout", None, None, sent, time.time())
    except httpx.HTTPError as exc:
        return AgentProbe(node, url, None, _why_not(exc), None, None, sent, time.time())
    received = time.time()
    try:
        body = resp.json()
    except ValueError:
        body = resp.text[:200]
    return AgentProbe(
        node, url, resp.status_code, None, body, resp.headers.get("date"), sent, received
    )


def _why_not(exc: BaseException) -> str:
    """``refused``, or the innermost error's words (httpx wraps the socket's error twice)."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, ConnectionRefusedError):
            return "refused"
        if isinstance(inner, socket.gaierror):
            return f"its host name does not resolve ({inner.strerror})"
        inner = inner.__cause__ or inner.__context__
    return str(exc) or type(exc).__name__


async def _probe_all(cfg: Config) -> list[AgentProbe]:
    async with httpx.AsyncClient(trust_env=False, timeout=AGENT_TIMEOUT) as client:
        probes = (_probe(client, n, cfg.nodes[n]) for n in cfg.agent_nodes)
        return list(await asyncio.gather(*probes))


async def agent_probes(ctx: Context) -> list[AgentProbe]:
    """Every agent's status, asked once for the agents' and the clocks' checks."""
    cfg = ctx.config
    if cfg is None or ctx.agent:
        return []
    task: asyncio.Future[list[AgentProbe]] = ctx.once(
        "agents", lambda: asyncio.ensure_future(_probe_all(cfg))
    )
    return await task


async def check_agents(ctx: Context) -> list[Result]:
    """Each remote node's agent answers ``/agent/status`` with this config's token."""
    return [_agent_result(ctx, p) for p in await agent_probes(ctx)]


def _agent_result(ctx: Context, p: AgentProbe) -> Result:
    name, n = f"agent {p.node}", p.node
    start = f"start it on that machine: modelyard agent -c {ctx.config_path.name} --node {n}"
    if p.error == "refused":
        return Result(
            name,
            "fail",
            f"agent down at {p.url} (connection refused)",
            f"{start}; check nodes.{n}.url's host and port",
        )
    if p.error == "timeout":
        return Result(
            name,
            "fail",
            f"no answer from {p.url} in {AGENT_TIMEOUT:g} s",
            f"is the machine up, its firewall open on that port, the url right? {start}",
        )
    if p.error is not None:
        return Result(
            name, "fail", f"cannot reach {p.url}: {p.error}", f"check nodes.{n}.url; {start}"
        )
    if p.status == 401:
        assert ctx.config is not None
        given = ctx.config.nodes[n].token
        why = "wrong token" if given else f"the agent requires a token; nodes.{n}.token is unset"
        return Result(
            name,
            "fail",
            f"{why}: the agent at {p.url} answered 401",
            f"nodes.{n}.token must be the token the agent was started with (the same "
            "config file on both machines, or the same ${ENV} value)",
        )
    if p.status != 200 or not isinstance(p.body, dict):
        return Result(
            name,
            "fail",
            f"{p.url} answered HTTP {p.status}: {str(p.body)[:200] or '(no body)'}",
            f"is it a modelyard agent? check nodes.{n}.url",
        )
    said = p.body.get("name")
    if said not in (None, n):
        return Result(
            name,
            "fail",
            f"{p.url} answers as node {said}, not {n}",
            "two nodes' urls are swapped, or the agent runs with the wrong --node",
        )
    gpus = p.body.get("gpus") if isinstance(p.body.get("gpus"), list) else []
    mode = p.body.get("mode", "?")
    return Result(name, "ok", f"reachable at {p.url}: mode {mode}, {len(gpus or [])} GPU(s)")


def clock_skew(
    date: str | None, sent: float, received: float, their_time: float | None = None
) -> tuple[float, float] | None:
    """(their clock less ours, ± uncertainty) in seconds, or None when nothing says.

    ``their_time`` (a clock field of the answer) is taken over the HTTP ``Date`` header,
    which has whole seconds: the agent's time was then in [Date, Date + 1), so its middle
    is taken and half a second added to the uncertainty, with half the round trip.
    """
    middle, trip = (sent + received) / 2, (received - sent) / 2
    if their_time is not None:
        return their_time - middle, trip
    if not date:
        return None
    try:
        stamp = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    return stamp + 0.5 - middle, 0.5 + trip


async def check_clock(ctx: Context) -> list[Result]:
    """Each agent's clock against this one's, from its answer's ``Date`` (or ``time``)."""
    found = []
    for p in await agent_probes(ctx):
        if p.status is None:
            continue  # not reached: the agent's check says why
        name = f"clock {p.node}"
        field = p.body.get("time") if isinstance(p.body, dict) else None
        their = float(field) if isinstance(field, int | float) else None
        skew = clock_skew(p.date, p.sent, p.received, their)
        if skew is None:
            found.append(Result(name, "info", f"{p.url} sent no Date header: skew unknown"))
            continue
        off, within = skew
        how = (
            "read from its status's clock"
            if their is not None
            else "read from its HTTP Date header, which has whole seconds"
        )
        if abs(off) - within > CLOCK_WARN_S:
            side = "ahead of" if off > 0 else "behind"
            found.append(
                Result(
                    name,
                    "warn",
                    f"node {p.node}'s clock is {abs(off):.1f} s {side} this machine's (±"
                    f"{within:.1f} s: {how}): the times of its events and engine logs "
                    "do not line up with the gateway's, so timelines across nodes mislead",
                    "keep both clocks synchronised: timedatectl set-ntp true (or chrony)",
                )
            )
        else:
            found.append(Result(name, "ok", f"{off:+.1f} s ±{within:.1f} s ({how})"))
    return found
