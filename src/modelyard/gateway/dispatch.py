"""Dispatch: the one path every request takes, whatever protocol it came in.

A front-end (today the OpenAI API; next Anthropic Messages, OpenAI Responses, Ollama,
audio) parses its request into a :class:`Call` and renders what comes back in its own
shape. Here: admit (the key may use the model) → route (the Decision) → acquire a place on
each candidate in turn → forward → record. A refusal is a :class:`Refusal`, never a
protocol's error body; an upstream answer passes through as it came.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from modelyard.config import ApiKey
from modelyard.gateway.access import may_use
from modelyard.gateway.attempt import Attempt, rejected
from modelyard.gateway.errors import Refusal
from modelyard.gateway.keepalive import stream_or_wait
from modelyard.gateway.proxy import Result, UpstreamUnavailable, forward
from modelyard.gateway.state import Gateway
from modelyard.gateway.timeouts import Deadline, limits_for
from modelyard.instance import Refused
from modelyard.routing import AUTO, Decision, features, route, strip_tags

Render = Callable[[Refusal], Response]
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class Call:
    """One request in no protocol's terms: what dispatch needs, nothing more."""

    path: str  # where it goes upstream: /chat/completions, /completions, /embeddings
    endpoint: str  # what routing and ``serves`` call it: chat, completions, embeddings
    asked: str  # the model, alias, tier or ``auto`` the client named
    body: dict[str, Any]  # the body to forward (a front-end translates into it)
    raw: bytes | None  # the body's bytes if it goes upstream as it came
    stream: bool
    headers: Mapping[str, str]  # the client's, read case-insensitively
    head: tuple[int, int]  # how many headers, and their bytes
    key: ApiKey | None
    began: float  # monotonic: its body was read
    owner: asyncio.Task[Any]  # the request's task: it holds the places it is granted

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key is not None else None


def decide(gw: Gateway, call: Call) -> Decision | Refusal:
    """The call's Decision, or why it is refused before anything runs."""
    named = gw.config.resolve(call.asked)
    if call.key is not None and not may_use(call.key, call.asked, named.name if named else None):
        return Refusal(
            403,
            f"API key {call.key.name!r} may not use {call.asked!r}; "
            f"it may use: {', '.join(call.key.models or [])}",
            code="model_not_allowed",
            param="model",
        )
    found = features(call.body, call.headers, gw.routing_headers, call.endpoint, *call.head)
    decision = route(gw.config, found, gw.cluster())
    if decision.target is None:
        return no_target(gw, call.asked)
    return decision


def no_target(gw: Gateway, asked: str) -> Refusal:
    if asked == AUTO:
        return Refusal(
            400,
            "`auto` needs a policy rule with `use` that holds for this request; none did",
            code="no_route",
            param="model",
        )
    names = [*gw.known_names(), *gw.config.tiers]
    return Refusal(
        404,
        f"model {asked!r} does not exist; known models and tiers: {', '.join(names)}",
        code="model_not_found",
        param="model",
    )


def refuse(gw: Gateway, call: Call, refusal: Refusal, render: Render) -> Response:
    """A call refused before it was routed: logged, then rendered."""
    rejected(gw, call.path, call.asked, call.began, call.key_name, refusal)
    return render(refusal)


async def run(gw: Gateway, call: Call, decision: Decision, render: Render) -> Response:
    """Serve ``call`` by its Decision's candidates in turn; the answer, or the refusal."""
    body, raw = call.body, call.raw
    if decision.strip:
        body, raw = strip_tags(body, decision.strip), None
    no_swap = call.headers.get("x-modelyard-no-swap", "").lower() in _TRUE
    attempt = Attempt(gw, decision, call.path, call.stream, call.began, call.key_name)
    deadline = Deadline(call.headers, call.stream, call.began)
    priority = call.key.priority if call.key is not None else 0

    async def serve() -> Response:
        try:
            return await hops()
        except asyncio.CancelledError:
            attempt.gone()
            raise

    async def hops() -> Response:
        for name in decision.candidates:
            if deadline.passed():
                attempt.turned_down(name, 504, f"not tried: {deadline.why()} has passed", None)
                break  # nobody would read the answer: no hidden retries past it
            wait, cut = deadline.bound(gw.wait_timeout(name))
            asked_at = time.monotonic()
            try:
                lease = await gw.scheduler.acquire(
                    name, no_swap, wait, force=decision.forced, priority=priority,
                    owner=call.owner,
                )  # fmt: skip
            except Refused as exc:
                if cut and exc.timed_out:
                    why = f"{name} was not ready before {deadline.why()} passed"
                    attempt.turned_down(name, 504, why, None)
                    break
                attempt.turned_down(name, exc.status, exc.reason, exc.retry_after)
                continue
            upstream = lease.instance.upstream
            assert upstream is not None, "acquire grants only an instance with a server"
            forwarded = {**body, "model": upstream.model} if upstream.model else body
            data = raw if forwarded is body and raw is not None else orjson.dumps(forwarded)
            finish = attempt.done(name, lease, asked_at)
            try:
                return await forward(
                    gw.client,
                    upstream,
                    call.path,
                    data,
                    stream=call.stream,
                    asked_model=name,
                    headers=attempt.headers(name, lease.instance.id),
                    limits=limits_for(gw.config, name, deadline),
                    done=finish,
                )
            except UpstreamUnavailable as exc:
                # The next candidate, or the refusal, decides what the client gets.
                finish(Result(exc.status, str(exc)), decided=False)
                attempt.turned_down(name, exc.status, str(exc), None)
            except BaseException:
                finish(Result(499, "client went away before the answer started"))
                raise
        return render(attempt.refusal())

    if not call.stream:
        return await serve()
    return await stream_or_wait(
        asyncio.ensure_future(serve()), {"x-modelyard-decision": attempt.id}
    )
