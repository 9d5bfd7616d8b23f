"""One request's way through its Decision's candidates, and what it leaves behind.

Each candidate tried is a *hop*; the request ends served by one of them or refused. Either
way it leaves exactly one decision (the trail and the hops), one row in the request log
and one count in the metrics, all written after the answer, off the request's own path.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from typing import Any, Protocol

from modelyard.errors import Code, Refusal, status_of
from modelyard.gateway.proxy import Result
from modelyard.gateway.state import Gateway
from modelyard.gpu_lease import Hold
from modelyard.instance import Lease
from modelyard.routing import CONTEXT, UNSERVED, Decision, context_use
from modelyard.store import RequestRow
from modelyard.telemetry import outcome

# Decision ids: a random prefix per process and a counter, 16 hex digits as a uuid4's first
# 16 were, unique across restarts without a syscall per request.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count()


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


class Finish(Protocol):
    """Gives the instance's slot back and records the request (once, whatever calls it)."""

    def __call__(self, result: Result, decided: bool = True) -> None: ...


class Attempt:
    """A request on its way through its Decision's candidates."""

    def __init__(
        self,
        gw: Gateway,
        decision: Decision,
        path: str,
        stream: bool,
        began: float,
        key: str | None,
    ) -> None:
        self.gw, self.decision, self.path, self.stream = gw, decision, path, stream
        self.began, self.key = began, key
        self.arrived = time.time() - (time.monotonic() - began)  # wall clock, for the log
        self.id = _new_id()
        self.hops: list[dict[str, Any]] = []
        nobody = (Code.MODEL_UNAVAILABLE, 503, "no candidate", None)
        self.last: tuple[Code, int, str, float | None] = nobody  # code, status, why, retry
        self.recorded = False
        self.chars: int | None = None  # the characters a speech request asks to be spoken
        self.protocol: str | None = None  # e.g. "anthropic, native" or "anthropic → chat"

    def turned_down(
        self, name: str, code: Code, reason: str, retry: float | None, status: int | None = None
    ) -> None:
        """``name`` did not serve: ``code`` says why, with its own status unless ``status``."""
        status = status_of(code) if status is None else status
        self.hops.append({"model": name, "status": status, "why": reason})
        self.last = (code, status, reason, retry)

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
        if self.decision.persona:
            out["x-modelyard-persona"] = self.decision.persona
        use = context_use(self.gw.config, name, self.decision.features)
        if use is not None and use > self.gw.config.models[name].context_warn:
            out["x-modelyard-context-warning"] = (
                f"about {self.decision.features.need} tokens, {use:.0%} of the window of {name}"
            )
        degraded = self.degraded()
        if degraded:
            out["x-modelyard-degraded"] = degraded.encode("ascii", "replace").decode()
        return out

    def done(self, name: str, lease: Lease, asked_at: float, hold: Hold | None = None) -> Finish:
        """The finish of the hop on ``lease`` (and its GPU leases, ``hold``), granted now
        after waiting since ``asked_at``."""
        released = False
        granted = time.monotonic()

        def finish(result: Result, decided: bool = True) -> None:
            nonlocal released
            if released:
                return
            released = True
            self.gw.scheduler.release(lease)
            self.gw.scheduler.gpu_leases.release(hold)
            if decided:
                overhead = None
                if result.sent is not None and not self.hops:  # a first hop: no fallback time
                    overhead = result.sent - self.began - (granted - asked_at)
                self.record(name, lease.instance.id, result, granted - self.began, overhead)

        return finish

    def record(
        self,
        model: str | None,
        instance: str | None,
        result: Result,
        wait: float | None,
        overhead: float | None = None,
        served: bool = True,
    ) -> None:
        """Leave the decision, the request row and the metrics of how it ended.

        ``model`` is the one that served it, or for a refusal the last one tried (the row
        keeps it; the decision says nobody served it). Written once the loop is free:
        an answer that is not streamed goes out first, its record after.
        """
        self.recorded = True
        asyncio.get_running_loop().call_soon(
            self._write, model, instance, result, wait, overhead, served, time.monotonic()
        )

    def _write(
        self,
        model: str | None,
        instance: str | None,
        result: Result,
        wait: float | None,
        overhead: float | None,
        served: bool,
        ended: float,
    ) -> None:
        node = self.gw.config.node_of(model) if model in self.gw.config.models else None
        ttft = None if result.first_byte is None else result.first_byte - self.began
        row = RequestRow(
            at=self.arrived,
            key=self.key,
            endpoint=self.path,
            asked=self.decision.asked,
            model=model,
            node=node,
            instance=instance,
            decision=self.id,
            status=result.status,
            outcome=outcome(result.status),
            stream=self.stream,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
            wait_s=wait,
            ttft_s=ttft,
            duration_s=ended - self.began,
            error=result.error,
            audio_s=result.audio_s,
            chars=self.chars,
        )
        self.gw.store.request(row)
        self.gw.telemetry.observe(row, overhead, self.decision.rule)
        published(self.gw, row)
        if not served:
            model = node = None
        degraded = self.degraded()
        body = {
            "id": self.id,
            **self.decision.as_dict(self.gw.config.telemetry.keep_prompts),
            "served_by": model,
            "status": result.status,
            "hops": self.hops,
            "degraded": degraded,
        }
        if self.protocol is not None:  # another protocol's request: passed or translated
            body["protocol"] = self.protocol
        self.gw.store.decision(
            self.id, self.decision.asked, self.decision.rule, model, node, result.status,
            degraded, body,
        )  # fmt: skip

    def gone(self) -> None:
        """The client left before any hop finished (queued, or waiting for a load)."""
        if not self.recorded:
            last = self.hops[-1]["model"] if self.hops else self.decision.target
            why = "client went away while waiting for a slot or a load"
            self.record(last, None, Result(499, why), None, served=False)

    def refusal(self) -> Refusal:
        """No candidate served: why, recorded (the front-end renders it)."""
        code, status, reason, retry = self.last
        turned = [s for s in self.decision.trail if s.kind == "candidate" and not s.ok]
        if (
            not self.decision.candidates
            and turned
            and all(s.why.startswith((CONTEXT, UNSERVED)) for s in turned)
        ):
            # The request itself is what no candidate takes: the client's to change.
            reason = f"{turned[0].name}: {turned[0].why}"
            code = (
                Code.CONTEXT_LENGTH_EXCEEDED
                if turned[0].why.startswith(CONTEXT)
                else Code.UNSUPPORTED_ENDPOINT
            )
            status = status_of(code)
        elif not self.decision.candidates:
            code, reason = Code.MODEL_UNAVAILABLE, "every candidate was turned down"
            status = status_of(code)
        last = self.hops[-1]["model"] if self.hops else None
        self.record(last, None, Result(status, reason), None, served=False)
        headers = {"x-modelyard-decision": self.id}
        if self.decision.rule:
            headers["x-modelyard-rule"] = self.decision.rule
        if self.decision.persona:
            headers["x-modelyard-persona"] = self.decision.persona
        if retry is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry)))
        # A plain request for one model gets the reason alone; a routed one, the trail too.
        routed = len(self.decision.trail) > 1 or not (self.hops or status == 400)
        message = f"{reason} (decision {self.id}: {self.decision.summary()})" if routed else reason
        return Refusal(code, message, headers=headers, status=status)


def rejected(
    gw: Gateway, path: str, asked: str, began: float, key: str | None, refusal: Refusal
) -> None:
    """Log a request refused before routing (bad body, unknown model, …)."""
    row = RequestRow(
        at=time.time() - (time.monotonic() - began),
        key=key,
        endpoint=path,
        asked=asked[:200],
        model=None,
        node=None,
        instance=None,
        decision=None,
        status=refusal.status,
        outcome=outcome(refusal.status),
        stream=False,
        tokens_in=None,
        tokens_out=None,
        wait_s=None,
        ttft_s=None,
        duration_s=time.monotonic() - began,
        error=refusal.message[:500],
    )
    gw.store.request(row)
    gw.telemetry.observe(row, None, None)
    published(gw, row)


def published(gw: Gateway, row: RequestRow) -> None:
    """A ``request`` event for a finished request, if anyone listens."""
    if gw.events.wants("request"):
        gw.events.publish("request", **row._asdict())
