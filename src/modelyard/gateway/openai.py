"""The OpenAI-compatible API: chat, completions, embeddings and the model list."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Coroutine
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.gateway.access import may_use
from modelyard.gateway.errors import error_response
from modelyard.gateway.keepalive import stream_or_wait
from modelyard.gateway.proxy import UpstreamUnavailable, forward
from modelyard.gateway.state import Gateway
from modelyard.gateway.timeouts import Deadline, limits_for
from modelyard.routing import AUTO, CONTEXT, Decision, context_use, features, route, strip_tags
from modelyard.scheduler import Instance, Refused

_TRUE = {"1", "true", "yes", "on"}


async def chat_completions(request: Request) -> Response:
    return await _until_gone(request, _proxy(request, "/chat/completions"))


async def completions(request: Request) -> Response:
    return await _until_gone(request, _proxy(request, "/completions"))


async def embeddings(request: Request) -> Response:
    return await _until_gone(request, _proxy(request, "/embeddings"))


async def _until_gone(request: Request, work: Coroutine[Any, Any, Response]) -> Response:
    """Run ``work`` until it answers or the client goes away, whichever comes first.

    A client that disconnects while queued, while its model loads, or while a non-streamed
    answer is generated cancels ``work``: its place in the queue goes, its slot comes back
    (``finally``) and the upstream request is closed, which stops the generation. Streamed
    answers are watched by the stream itself once they start.
    """
    await request.body()  # read first: the watcher below only sees what follows

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # its place, its slot and its upstream are given back first
    if task.cancelled():
        return Response(status_code=499)  # nobody is there to read it
    return task.result()


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"object": "list", "data": gw.model_cards()})


async def _proxy(request: Request, path: str) -> Response:
    gw: Gateway = request.app.state.gateway
    began = time.monotonic()
    raw = await request.body()
    parsed = _parse(raw, gw)
    if isinstance(parsed, Response):
        return parsed
    body, asked = parsed
    key = request.scope.get("state", {}).get("api_key")
    named = gw.config.resolve(asked)
    if not may_use(key, asked, named.name if named else None):
        return error_response(
            403,
            f"API key {key.name!r} may not use {asked!r}; it may use: {', '.join(key.models)}",
            code="model_not_allowed",
            param="model",
        )
    if len(raw) > gw.config.access.max_body:
        return error_response(413, f"the body is over {gw.config.access.max_body} bytes")
    decision = route(gw.config, features(body, request.headers), gw.cluster())
    if decision.target is None:
        return _no_target(gw, asked)
    if decision.strip:
        body = strip_tags(body, decision.strip)
    stream = body.get("stream") is True
    no_swap = request.headers.get("x-modelyard-no-swap", "").lower() in _TRUE
    attempt = Attempt(gw, decision, path, stream, began)

    deadline = Deadline(request.headers, stream, began)
    priority = key.priority if key is not None else 0

    async def serve() -> Response:
        for name in decision.candidates:
            if deadline.passed():
                attempt.turned_down(name, 504, f"not tried: {deadline.why()} has passed", None)
                break  # nobody would read the answer: no hidden retries past it
            wait, cut = deadline.bound(gw.wait_timeout(name))
            try:
                inst = await gw.scheduler.acquire(
                    name, no_swap, timeout=wait, force=decision.forced, priority=priority
                )
            except Refused as exc:
                if cut and exc.timed_out:
                    why = f"{name} was not ready before {deadline.why()} passed"
                    attempt.turned_down(name, 504, why, None)
                    break
                attempt.turned_down(name, exc.status, exc.reason, exc.retry_after)
                continue
            upstream = inst.upstream
            assert upstream is not None, "a granted instance is ready"
            forwarded = {**body, "model": upstream.model} if upstream.model else body
            data = raw if forwarded is body and not decision.strip else orjson.dumps(forwarded)
            finish = attempt.done(name, inst)
            try:
                return await forward(
                    gw.session,
                    upstream,
                    path,
                    data,
                    stream=stream,
                    asked_model=name,
                    headers=attempt.headers(name, inst.id),
                    limits=limits_for(gw.config, name, deadline),
                    done=finish,
                )
            except UpstreamUnavailable as exc:
                # The next candidate, or the refusal, decides what the client gets.
                finish(exc.status, str(exc), decided=False)
                attempt.turned_down(name, exc.status, str(exc), None)
            except BaseException:
                finish(499, "client went away before the answer started")
                raise
        return attempt.refusal()

    if not stream:
        return await serve()
    return await stream_or_wait(
        asyncio.ensure_future(serve()), {"x-modelyard-decision": attempt.id}
    )


class Finish(Protocol):
    """Gives the instance's slot back and records the request (once, whatever calls it)."""

    def __call__(self, status: int, error: str | None, decided: bool = True) -> None: ...


class Attempt:
    """One request's way through its Decision's candidates, and what it leaves in the log."""

    def __init__(
        self, gw: Gateway, decision: Decision, path: str, stream: bool, began: float
    ) -> None:
        self.gw, self.decision, self.path, self.stream, self.began = (
            gw,
            decision,
            path,
            stream,
            began,
        )
        self.id = uuid.uuid4().hex[:16]
        self.hops: list[dict[str, Any]] = []
        self.last: tuple[int, str, float | None] = (503, "no candidate", None)

    def turned_down(self, name: str, status: int, reason: str, retry: float | None) -> None:
        self.hops.append({"model": name, "status": status, "why": reason})
        self.last = (status, reason, retry)

    def degraded(self) -> str | None:
        """Why the request is not served by the target's first choice, if it is not."""
        skipped = self.decision.degraded()
        if skipped is None and self.hops:
            skipped = f"{self.hops[0]['model']}: {self.hops[0]['why']}"
        return skipped[:300] if skipped else None

    def headers(self, name: str, instance: str) -> dict[str, str]:
        out = {
            "x-modelyard-decision": self.id,
            "x-modelyard-model": name,
            "x-modelyard-node": self.gw.config.node_of(name),
            "x-modelyard-instance": instance,
        }
        if self.decision.rule:
            out["x-modelyard-rule"] = self.decision.rule
        use = context_use(self.gw.config, name, self.decision.features)
        if use is not None and use > self.gw.config.models[name].context_warn:
            out["x-modelyard-context-warning"] = (
                f"about {self.decision.features.need} tokens, {use:.0%} of the window of {name}"
            )
        degraded = self.degraded()
        if degraded:
            out["x-modelyard-degraded"] = degraded.encode("ascii", "replace").decode()
        return out

    def done(self, name: str, inst: Instance) -> Finish:
        released = False
        waited = time.monotonic() - self.began

        def finish(status: int, error: str | None, decided: bool = True) -> None:
            nonlocal released
            if released:
                return
            released = True
            self.gw.scheduler.release(inst)
            self.gw.store.request(
                name,
                inst.id,
                self.path,
                status,
                self.stream,
                waited,
                time.monotonic() - self.began,
                error,
            )
            if decided:
                self.log(name, status)

        return finish

    def log(self, model: str | None, status: int) -> None:
        body = {
            "id": self.id,
            **self.decision.as_dict(),
            "served_by": model,
            "status": status,
            "hops": self.hops,
            "degraded": self.degraded(),
        }
        node = self.gw.config.node_of(model) if model else None
        self.gw.store.decision(
            self.id,
            self.decision.asked,
            self.decision.rule,
            model,
            node,
            status,
            self.degraded(),
            body,
        )

    def refusal(self) -> Response:
        status, reason, retry = self.last
        turned = [s for s in self.decision.trail if s.kind == "candidate" and not s.ok]
        code = {409: "swap_refused", 504: "timeout"}.get(status, "model_unavailable")
        if (
            not self.decision.candidates
            and turned
            and all(s.why.startswith(CONTEXT) for s in turned)
        ):
            status, reason, code = (
                400,
                f"{turned[0].name}: {turned[0].why}",
                "context_length_exceeded",
            )
        elif not self.decision.candidates:
            status, reason = 503, "every candidate was turned down"
        self.log(None, status)
        self.gw.store.request(
            self.decision.target or self.decision.asked,
            None,
            self.path,
            status,
            self.stream,
            None,
            time.monotonic() - self.began,
            reason,
        )
        headers = {"x-modelyard-decision": self.id}
        if self.decision.rule:
            headers["x-modelyard-rule"] = self.decision.rule
        if retry is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry)))
        # A plain request for one model gets the reason alone; a routed one, the trail too.
        routed = len(self.decision.trail) > 1 or not self.hops
        message = f"{reason} (decision {self.id}: {self.decision.summary()})" if routed else reason
        return error_response(status, message, code=code, headers=headers)


def _no_target(gw: Gateway, asked: str) -> Response:
    if asked == AUTO:
        return error_response(
            400,
            "`auto` needs a policy rule with `use` that holds for this request; none did",
            param="model",
            code="no_route",
        )
    names = [*gw.known_names(), *gw.config.tiers]
    return error_response(
        404,
        f"model {asked!r} does not exist; known models and tiers: {', '.join(names)}",
        code="model_not_found",
        param="model",
    )


def _parse(raw: bytes, gw: Gateway) -> tuple[dict[str, Any], str] | Response:
    """The body as a dict and the model asked for, or the 400 that says what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"the request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_response(400, "the request body must be a JSON object")
    asked = body.get("model")
    if not isinstance(asked, str) or not asked:
        return error_response(
            400,
            f"`model` is required, a string naming one of: {', '.join(gw.known_names())}",
            param="model",
        )
    return body, asked


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
