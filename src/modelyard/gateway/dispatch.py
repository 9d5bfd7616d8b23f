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
from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.responses import Response

from modelyard.cluster_watch import NO_CLAIM, Claim
from modelyard.config import ApiKey, ModelBase
from modelyard.errors import Code, Refusal, Refused, UpstreamUnavailable
from modelyard.gateway.access import may_use
from modelyard.gateway.attempt import Attempt, rejected
from modelyard.gateway.harmony_stream import HarmonyStream
from modelyard.gateway.keepalive import stream_or_wait
from modelyard.gateway.proxy import Result, Translation, forward
from modelyard.gateway.state import Gateway
from modelyard.gateway.timeouts import Deadline, limits_for
from modelyard.gpu_lease import Hold
from modelyard.instance import Lease
from modelyard.routing import AUTO, Decision, Features, route

Render = Callable[[Refusal], Response]
Edit = Callable[[dict[str, Any], Decision], dict[str, Any]]
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Native:
    """A request as it came in a protocol some engines speak themselves."""

    protocol: str  # as ``models.NAME.protocols`` names it: anthropic, responses
    path: str  # its upstream path: /messages, /responses
    raw: bytes  # its body
    last_event: bytes  # the bytes of its stream's last event
    # Its Chat Completions translation, made only when a hop needs it: an engine that does
    # not speak the protocol, or a decision that edits the request (a persona's prompt).
    to_chat: Callable[[], dict[str, Any]]


@dataclass
class Call:
    """One request in no protocol's terms: what dispatch needs, nothing more."""

    path: str  # where it goes upstream: /chat/completions, /embeddings, /audio/speech, ...
    endpoint: str  # what routing and ``serves`` call it: chat, embeddings, speech, ...
    asked: str  # the model, alias, tier or ``auto`` the client named
    body: dict[str, Any]  # the body to forward; another protocol's: ``native.to_chat()``
    raw: bytes | None  # the body's bytes if it goes upstream as it came
    stream: bool
    headers: Mapping[str, str]  # the client's, read case-insensitively
    features: Features  # what routing reads of it, extracted by the front-end
    edit: Edit  # the front-end's way to apply a Decision's edits to ``body``
    key: ApiKey | None
    began: float  # monotonic: its body was read
    owner: asyncio.Task[Any]  # the request's task: it holds the places it is granted
    content_type: str = "application/json"  # of ``raw`` (multipart: an audio upload)
    # Another protocol's request: as it came, for an engine that speaks it (``native``), and
    # how to make its answer of a Chat Completions one for an engine that does not.
    native: Native | None = None
    translate: Callable[[], Translation] | None = None
    keepalive: bool = True  # SSE comments while a stream waits (not for NDJSON: Ollama)
    from_root: bool = False  # ``path`` is on the server's root, not under its /v1 (/infill)
    last_event: bytes = b"data: [DONE]"  # of a translated stream (llama-server's /infill)
    claim: Claim = NO_CLAIM  # its count on a least_busy member, until the scheduler's

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key is not None else None


def decide(gw: Gateway, call: Call) -> Decision | Refusal:
    """The call's Decision, or why it is refused before anything runs."""
    asked, _ = gw.config.mapped(call.asked)  # a name matched by model_patterns: its target
    persona = gw.config.personas.get(asked)
    if persona is not None and call.endpoint != "chat":
        return Refusal(
            Code.UNSUPPORTED_ENDPOINT,
            f"{call.asked!r} is a persona, for chat only: its system prompt has no place in "
            f"{call.endpoint}; ask for its model {persona.use!r}",
            param="model",
        )
    named = gw.config.resolve(persona.use if persona is not None else asked)
    canonical = named.name if named else None
    # A persona: the key lists it, or the model or tier it uses.
    allowed = may_use(call.key, asked, canonical) or (
        persona is not None and may_use(call.key, persona.use, canonical)
    )
    if call.key is not None and not allowed:
        return Refusal(
            Code.MODEL_NOT_ALLOWED,
            f"API key {call.key.name!r} may not use {call.asked!r}; "
            f"it may use: {', '.join(call.key.models or [])}",
            param="model",
        )
    decision = route(gw.config, call.features, gw.watch.cluster())
    if decision.target is None:
        return no_target(gw, call.asked)
    call.claim = gw.watch.routed(decision.target, decision.model)
    return decision


class _Body:
    """What a call sends upstream, made once and only when a hop needs it: the Chat
    Completions body as the decision edits it (another protocol's request translated first),
    or another protocol's request as it came."""

    def __init__(self, call: Call, decision: Decision) -> None:
        self._call, self._decision = call, decision
        self._chat: dict[str, Any] | None = None
        self._translated: dict[str, Any] | None = None  # before the decision's edits
        # Without edits it goes as it came, untranslated; with them, it does only if they
        # changed nothing (a strip pattern that matched no tag).
        self._as_came = not decision.edits or self.chat() is self._translated

    def native_for(self, spec: ModelBase) -> Native | None:
        """The request as it came, if ``spec``'s engine speaks its protocol and no decision
        edited it; else None (it gets ``chat_bytes``)."""
        native = self._call.native
        if native is None or not self._as_came or native.protocol not in spec.speaks:
            return None
        return native

    def chat(self) -> dict[str, Any]:
        """The Chat Completions body as the decision has it go."""
        if self._chat is None:
            call = self._call
            self._translated = call.native.to_chat() if call.native is not None else call.body
            self._chat = call.edit(self._translated, self._decision)
        return self._chat

    def chat_bytes(self, model: str | None) -> bytes:
        """``chat`` as sent, with the engine's own model name when it has one: the client's
        bytes when nothing changed them."""
        chat = self.chat()
        call = self._call
        if not model and chat is call.body and call.raw is not None:
            return call.raw
        return orjson.dumps({**chat, "model": model} if model else chat)


def _renamed(raw: bytes, model: str | None) -> bytes:
    """A native request's body with the engine's own model name, when it has one."""
    if model is None:
        return raw
    body = orjson.loads(raw)
    return orjson.dumps({**body, "model": model})


async def _turn(
    gw: Gateway, name: str, lease: Lease, wait: float | None, asked_at: float
) -> Hold | None:
    """The GPU leases of ``name`` (its serial GPUs, its ``serial:`` name), taken once its
    place is granted, within what is left of the wait; its place goes back if they are not.
    """
    leases = gw.config.leases_of(name)
    if not leases:
        return None
    left = None if wait is None else max(0.0, wait - (time.monotonic() - asked_at))
    try:
        return await gw.scheduler.gpu_leases.take(name, leases, left)
    except BaseException:
        gw.scheduler.release(lease)
        raise


def admit(
    gw: Gateway, call: Call, render: Render, problem: tuple[str, str] | None = None
) -> Decision | Response:
    """The call's Decision, or its refusal logged and rendered: what ``decide`` refuses
    first (an unknown model is a 404 before anything else), then ``problem``, what is
    wrong with the body and the field at fault."""
    decision = decide(gw, call)
    if isinstance(decision, Refusal):
        return refuse(gw, call, decision, render)
    if problem is not None:
        return refuse(gw, call, Refusal(Code.INVALID_REQUEST, *problem), render)
    return decision


def first_model(gw: Gateway, decision: Decision) -> ModelBase | None:
    """The model a decision tries first (None when it has none)."""
    return gw.config.models.get(decision.model) if decision.model is not None else None


def no_target(gw: Gateway, asked: str) -> Refusal:
    if asked == AUTO:
        return Refusal(
            Code.NO_ROUTE,
            "`auto` needs a policy rule with `use` that holds for this request; none did",
            param="model",
        )
    names = [*gw.config.names(), *gw.config.tiers]
    return Refusal(
        Code.MODEL_NOT_FOUND,
        f"model {asked!r} does not exist; known models and tiers: {', '.join(names)}",
        param="model",
    )


def refuse(gw: Gateway, call: Call, refusal: Refusal, render: Render) -> Response:
    """A call refused before it was routed: logged, then rendered."""
    rejected(gw, call.path, call.asked, call.began, call.key_name, refusal)
    return render(refusal)


async def run(gw: Gateway, call: Call, decision: Decision, render: Render) -> Response:
    """Serve ``call`` by its Decision's candidates in turn; the answer, or the refusal."""
    body = _Body(call, decision)
    no_swap = call.headers.get("x-modelyard-no-swap", "").lower() in _TRUE
    attempt = Attempt(gw, decision, call.path, call.stream, call.began, call.key_name)
    if call.endpoint == "speech" and isinstance(text := call.body.get("input"), str):
        attempt.chars = len(text)  # speech's usage, in place of tokens
    deadline = Deadline(call.headers, call.stream, call.began)
    priority = call.key.priority if call.key is not None else 0

    async def serve() -> Response:
        try:
            return await hops()
        except asyncio.CancelledError:
            attempt.gone()
            raise
        finally:
            call.claim.release()

    async def hops() -> Response:
        for name in decision.candidates:
            if deadline.passed():
                why = f"not tried: {deadline.why()} has passed"
                attempt.turned_down(name, Code.TIMEOUT, why, None)
                break  # nobody would read the answer: no hidden retries past it
            wait, cut = deadline.bound(gw.config.wait_limit(name))
            asked_at = time.monotonic()
            call.claim.release()  # acquire counts it from here (in the same loop turn)
            try:
                lease = await gw.scheduler.acquire(
                    name, no_swap, wait, force=decision.forced, priority=priority,
                    owner=call.owner,
                )  # fmt: skip
                hold = await _turn(gw, name, lease, wait, asked_at)
            except Refused as exc:
                if cut and exc.timed_out:
                    why = f"{name} was not ready before {deadline.why()} passed"
                    attempt.turned_down(name, Code.TIMEOUT, why, None)
                    break
                attempt.turned_down(name, exc.code, exc.reason, exc.retry_after, exc.status)
                continue
            upstream = lease.instance.upstream
            assert upstream is not None, "acquire grants only an instance with a server"
            spec = gw.config.models[name]
            # Another protocol: as it came to an engine that speaks it (when no decision
            # edited it), else translated onto Chat Completions and its answer back.
            native = body.native_for(spec)
            path, last_event, translate = call.path, call.last_event, None
            if native is not None:
                path, last_event = native.path, native.last_event
                data = _renamed(native.raw, upstream.model)
            else:
                data = body.chat_bytes(upstream.model)
                translate = call.translate() if call.translate is not None else None
            finish = attempt.done(name, lease, asked_at, hold)
            headers = attempt.headers(name, lease.instance.id)
            if call.native is not None:
                how = "native" if native else "translated"
                headers["x-modelyard-protocol"] = f"{call.native.protocol}; {how}"
                attempt.protocol = f"{call.native.protocol}, {how}"
            # Harmony's tags out of a chat answer, where the engine leaves them (per hop).
            harmony = call.endpoint == "chat" and spec.harmony and native is None
            if call.from_root:
                upstream = replace(upstream, base_url=upstream.base_url.removesuffix("/v1"))
            try:
                return await forward(
                    gw.client,
                    upstream,
                    path,
                    data,
                    stream=call.stream,
                    asked_model=name,
                    headers=headers,
                    limits=limits_for(gw.config, name, deadline),
                    done=finish,
                    content_type=call.content_type,
                    rewrite=HarmonyStream() if harmony else None,
                    translate=translate,
                    last_event=last_event,
                )
            except UpstreamUnavailable as exc:
                # The next candidate, or the refusal, decides what the client gets.
                finish(Result(exc.status, str(exc)), decided=False)
                attempt.turned_down(name, exc.code, str(exc), None, exc.status)
            except BaseException:
                finish(Result(499, "client went away before the answer started"))
                raise
        return render(attempt.refusal())

    if not call.stream or not call.keepalive:
        return await serve()
    early = {"x-modelyard-decision": attempt.id}  # a stream that waits: its headers go first
    if decision.persona:
        early["x-modelyard-persona"] = decision.persona
    serving = asyncio.ensure_future(serve())
    serving.add_done_callback(lambda _: call.claim.release())  # cancelled before it ran
    return await stream_or_wait(serving, early)
