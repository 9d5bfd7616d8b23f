"""The scheduler's run loop: one task owns every instance's state and acts on ``decide``.

Requests and admin commands become *waiters*; the loop asks the pure
:func:`modelyard.lifecycle.decide` what to do and does it (grant, refuse, start, drain,
stop). Starts and stops run as tasks that post what became of them back to the loop, as do
node callbacks and admin commands (``_post``): the loop applies them in order before it
decides again, so it is the one writer of instance state and no lock is needed. The one
exception is a request's own grant and release (``acquire``'s fast path, ``release``),
which take and give back what ``decide`` would, with no await in between.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from modelyard import span
from modelyard.config import Config
from modelyard.engines.base import Upstream
from modelyard.errors import Code, Refused, StartError
from modelyard.events import Hub
from modelyard.facts import inventory, model_facts, timing
from modelyard.gpu_lease import GpuLeases
from modelyard.instance import Instance, Lease, orphaned
from modelyard.lifecycle import (
    Action,
    Drain,
    Grant,
    InstanceView,
    ModelFacts,
    Refuse,
    Start,
    State,
    Stop,
    Waiter,
    decide,
    granted_at_once,
    queue_wait,
    quiet_release,
    residents_of,
)
from modelyard.nodes import NodeHandle
from modelyard.store import Store


@dataclass
class _Waiter:
    waiter: Waiter
    future: asyncio.Future[Lease]
    owner: asyncio.Task[Any] | None
    admin: bool = False


class Scheduler:
    """Starts, swaps and stops the instances of this node as requests need them."""

    def __init__(
        self, config: Config, nodes: dict[str, NodeHandle], store: Store, events: Hub
    ) -> None:
        self.nodes = nodes
        self.store = store  # read for typical load times; state changes go to ``events``
        self.events = events
        self.instances: dict[str, Instance] = {}
        self.parts: span.Placements = {}  # a model across nodes: where its parts run now
        self._waiters: list[_Waiter] = []
        self._took: dict[str, deque[float]] = {}  # recent requests' seconds on a slot
        self.leaks: dict[str, int] = {}  # places found held by finished requests, per model
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._retired: dict[str, ModelFacts] = {}  # removed from the config, still running
        # Changes of instance state from outside the loop (a start or stop that ended, an
        # engine's exit, an admin command), applied by the loop in order before it decides.
        self._inbox: deque[Callable[[], None]] = deque()
        self._rules: dict[str, ModelFacts] | None = None
        self.gpu_leases = GpuLeases()  # taken by requests after their slot (gpu_lease.py)
        self.apply_config(config)

    def apply_config(
        self, config: Config, changed: Iterable[str] = (), removed: Iterable[str] = ()
    ) -> None:
        """Take ``config`` now: every start from here on uses it.

        Instances of ``changed`` and ``removed`` models that run on the old settings are
        told to stop once their requests finish (bounded by the drain timeout); a changed
        one comes back on the new settings when a request needs it. A removed one keeps its
        old rule until it has stopped, then goes. Done in one step, with no await: a start
        in between would use the old settings (the reload window).
        """
        old = self.rules() if changed or removed else {}
        self.config = config
        self.timing = timing(config)
        for name in config.models:
            self.instances.setdefault(name, Instance(name))
        for name in [*changed, *removed]:
            inst = self.instances.get(name)
            if inst is None:
                continue
            if inst.state in (State.STOPPED, State.FAILED):
                if name not in config.models:
                    del self.instances[name]
                continue
            inst.stop_wanted = True
            if name not in config.models and name in old:
                self._retired[name] = old[name]
        self._rules = None
        self._kick()

    async def retired(self, names: Iterable[str], generation: dict[str, int]) -> None:
        """Wait until none of ``names`` runs on the settings it had at ``generation``."""

        def done(name: str) -> bool:
            inst = self.instances.get(name)
            return (
                inst is None
                or inst.state in (State.STOPPED, State.FAILED)
                or inst.generation > generation.get(name, 0)
            )

        await self._until(lambda: all(done(n) for n in names))

    # -- the loop -------------------------------------------------------------------------

    def start_loop(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="modelyard-scheduler")

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._inbox:
                while self._inbox:
                    self._inbox.popleft()()
                self._pulse()
            now = time.monotonic()
            plan = decide(
                self.rules(),
                self._views(),
                [w.waiter for w in self._waiters],
                self.timing,
                now,
                {name: node.view() for name, node in self.nodes.items()},
                inventory(self.config, self.nodes),
            )
            for action in plan.actions:
                self._apply(action, now)
            if plan.actions:
                continue
            timeout = None if plan.wake_at is None else max(plan.wake_at - now, 0.0) + 0.001
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def rules(self) -> dict[str, ModelFacts]:
        """What decide needs of each model: where it runs and what it needs there.

        Worked out once per config and per look at the nodes (``poke``), not per request.
        """
        if self._rules is None:
            self._rules = {**self._retired, **model_facts(self.config, self.nodes)}
        return self._rules

    def _views(self) -> dict[str, InstanceView]:
        """What decide sees of every instance, with what each model across nodes holds."""
        held = {m: placed.needs for m, placed in self.parts.items()}
        return {n: i.view(held.get(n, ())) for n, i in self.instances.items()}

    def _kick(self) -> None:
        self._wake.set()

    def poke(self) -> None:
        """Look again: something outside changed (a node's mode, GPUs or reachability)."""
        self._rules = None
        self._kick()

    def said(
        self, inst: Instance, event: str, detail: str = "", seconds: float | None = None
    ) -> None:
        """Publish what became of ``inst`` (the store records it; subscribers see it)."""
        self.events.publish(
            "instance", model=inst.model, event=event, state=inst.state.value,
            instance=inst.id if inst.generation else None, node=inst.node or None,
            detail=detail, seconds=seconds,
        )  # fmt: skip

    def _post(self, change: Callable[[], None]) -> None:
        """Hand ``change`` to the loop, the one writer of instance state (a request's grant
        and release aside: ``acquire``'s fast path takes what ``decide`` would grant)."""
        self._inbox.append(change)
        self._kick()

    async def _applied(self, change: Callable[[], None]) -> None:
        """Post ``change`` and wait until the loop has applied it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def apply() -> None:
            change()
            if not done.done():
                done.set_result(None)

        self._post(apply)
        await done

    def _pulse(self) -> None:
        """Wake whoever waits for a state change (admin commands)."""
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _apply(self, action: Action, now: float) -> None:
        if isinstance(action, Grant | Refuse):
            entry = next(w for w in self._waiters if w.waiter.id == action.waiter)
            self._waiters.remove(entry)
            inst = self.instances[action.model]
            if entry.future.done():
                return
            if isinstance(action, Grant):
                entry.future.set_result(self._lease(inst, entry.owner, entry.admin, now))
            else:
                retry = inst.retry_at - now if inst.retry_at else self._queue_wait(inst.model, now)
                refused = Refused(action.code, action.reason, retry, status=action.status)
                entry.future.set_exception(refused)
            return
        inst = self.instances[action.model]
        inst.since, inst.reason = now, action.reason
        if isinstance(action, Start):
            inst.state = State.STARTING
            inst.generation += 1
            inst.node = self.config.node_of(inst.model)
            expected = self.store.typical_load_seconds(inst.model)  # for a progress bar
            self.said(inst, "starting", action.reason, expected)
            inst.task = asyncio.create_task(self._starting(inst))
        elif isinstance(action, Drain):
            inst.state = State.DRAINING
            self.said(inst, "draining", action.reason)
        elif isinstance(action, Stop):
            inst.state = State.STOPPING
            self.said(inst, "stopping", action.reason)
            inst.task = asyncio.create_task(self._stopping(inst, action.reason))
        self._pulse()

    async def _starting(self, inst: Instance) -> None:
        model = self.config.models[inst.model]
        timeout = model.start_timeout or self.config.scheduler.start_timeout
        began = time.monotonic()
        held = residents_of(self.rules(), self._views()).values()  # the split leaves them theirs
        starting = span.start(
            self.nodes, self.config, inst.model, inst.node, timeout, self.parts, held
        )
        try:
            upstream, pid = await starting
        except StartError as exc:
            self._post(functools.partial(self._failed, inst, exc))
        else:
            self._post(functools.partial(self._ready, inst, upstream, pid, began))

    def _ready(self, inst: Instance, upstream: Upstream, pid: int | None, began: float) -> None:
        now = time.monotonic()
        inst.upstream, inst.pid = upstream, pid
        inst.state, inst.since, inst.last_used = State.READY, now, now
        inst.failures, inst.retry_at, inst.restart, inst.error = 0, None, False, None
        self.said(inst, "ready", f"pid {inst.pid}", now - began)

    def _failed(self, inst: Instance, exc: StartError) -> None:
        inst.failures += 1
        inst.restarts += 1
        inst.error = str(exc)
        inst.state, inst.since, inst.stop_wanted = State.FAILED, time.monotonic(), False
        gave_up = inst.failures >= self.timing.max_restarts
        inst.retry_at = None if gave_up else inst.since + self.timing.backoff(inst.failures)
        self.said(inst, "failed", "\n".join([str(exc), *exc.tail]))

    async def _stopping(self, inst: Instance, reason: str) -> None:
        try:
            await span.stop(self.nodes, self.config, inst.model, inst.node, reason, self.parts)
        finally:
            self._post(functools.partial(self._stopped, inst, reason))

    def _stopped(self, inst: Instance, reason: str) -> None:
        inst.state, inst.since = State.STOPPED, time.monotonic()
        inst.upstream, inst.pid, inst.stop_wanted = None, None, False
        inst.keep_alive = None  # a client's keep_alive was for that run
        self.said(inst, "stopped", reason)
        if self._retired.pop(inst.model, None) is not None:
            del self.instances[inst.model]  # removed from the config: gone for good
            self._rules = None

    def on_exit(self, model: str, why: str) -> None:
        """An engine ended that nobody stopped: a crash. It comes back after the backoff."""
        self._post(functools.partial(self._crashed, model, why))

    def _crashed(self, model: str, why: str) -> None:
        inst = self.instances.get(model)
        if inst is None or inst.state not in (State.READY, State.DRAINING):
            return
        now = time.monotonic()
        inst.failures += 1
        inst.restarts += 1
        inst.state, inst.since, inst.upstream, inst.pid = State.FAILED, now, None, None
        inst.error, inst.restart = why, True
        gave_up = inst.failures >= self.timing.max_restarts
        inst.retry_at = None if gave_up else now + self.timing.backoff(inst.failures)
        self.said(inst, "crashed", why)

    def on_gone(self, model: str, why: str) -> None:
        """An engine was stopped on its node without us (a mode change there, an agent restart)."""
        self._post(functools.partial(self._gone, model, why))

    def _gone(self, model: str, why: str) -> None:
        inst = self.instances.get(model)
        if inst is None or inst.state not in (State.READY, State.DRAINING):
            return
        inst.state, inst.since = State.STOPPED, time.monotonic()
        inst.upstream, inst.pid, inst.reason, inst.keep_alive = None, None, why, None
        self.said(inst, "stopped", why)

    # -- requests ---------------------------------------------------------------------------

    async def acquire(
        self,
        model: str,
        no_swap: bool = False,
        timeout: float | None = None,
        admin: bool = False,
        force: bool = False,
        priority: int = 0,
        owner: asyncio.Task[Any] | None = None,
    ) -> Lease:
        """Wait until ``model`` is ready and take a place on it; raises Refused.

        Waiters with a higher ``priority`` are granted first; equal ones in arrival order.
        ``owner`` is the request's task (default: the caller's), which must give the place
        back (``release``) before it ends. A cancel always wins over a grant made in the
        same turn of the event loop: the request sees CancelledError, and the place it was
        granted goes back here.
        """
        now = time.monotonic()
        waiter = Waiter(next(self._ids), model, now, no_swap, admin, force, priority)
        owner = owner or asyncio.current_task()
        inst = self.instances[model]
        if not self._waiters:
            rule = self.rules()[model]
            if granted_at_once(rule, inst.view(), self.nodes[rule.node].view(), waiter):
                return self._lease(inst, owner, admin, now)  # as decide would, no loop turn
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        entry = _Waiter(waiter, future, owner, admin)
        self._waiters.append(entry)
        self._kick()
        try:
            # Awaited directly, not through wait_for(shield(...)): on Python 3.11 wait_for
            # returns a result that lands in the same turn as a cancel, and drops the cancel.
            async with asyncio.timeout(timeout):
                lease = await future
        except TimeoutError:
            self._forget(entry)
            why = f"{model} was not ready within {timeout:g}s"
            raise Refused(Code.MODEL_UNAVAILABLE, why, 5.0, timed_out=True) from None
        except asyncio.CancelledError:
            self._forget(entry)
            raise
        if lease.instance.upstream is None and not admin:
            # Granted, then its server exited before this request got to run: its place
            # goes back and the request is refused like one that came a moment later.
            self.release(lease)
            raise Refused(Code.MODEL_UNAVAILABLE, f"{model} stopped before the request was sent")
        return lease

    def _lease(
        self, inst: Instance, owner: asyncio.Task[Any] | None, admin: bool, now: float
    ) -> Lease:
        lease = Lease(inst, owner, now, held=not admin)
        if not admin:
            inst.leases.add(lease)
        inst.last_used = now
        return lease

    def _forget(self, entry: _Waiter) -> None:
        """A waiter gives up (cancelled, timed out): out of the line, or its grant returned."""
        if entry in self._waiters:
            self._waiters.remove(entry)
            if not entry.future.done():
                entry.future.cancel()
        elif entry.future.done() and not entry.future.cancelled():
            if entry.future.exception() is None:
                self.release(entry.future.result())  # granted as it gave up: hand it back
        self._kick()

    def release(self, lease: Lease) -> None:
        """Give ``lease``'s place back; a second call for the same lease does nothing."""
        if not lease.held:
            return
        lease.held = False
        inst = lease.instance
        inst.leases.discard(lease)
        inst.last_used = time.monotonic()
        took = self._took.get(inst.model)
        if took is None:
            took = self._took[inst.model] = deque(maxlen=50)
        took.append(inst.last_used - lease.since)
        if self._waiters or not quiet_release(inst.view()):
            self._kick()

    def audit(self) -> dict[str, Any]:
        """Check that every place in use belongs to a request still running.

        A place whose request's task ended over a second before (one handed back by a done
        callback may lag a moment) is a leak: it is counted in ``leaks``, logged as an
        event and handed back. (``in_flight`` is the leases held: it cannot drift from them.)
        """
        found: list[str] = []
        for lease in orphaned(self.instances.values(), time.monotonic()):
            inst = lease.instance
            found.append(inst.model)
            self.leaks[inst.model] = self.leaks.get(inst.model, 0) + 1
            self.said(inst, "leak", f"a place of {inst.id} handed back")
            self.release(lease)
        return {"leaks_found": found, "leaks_total": sum(self.leaks.values())}

    def _queue_wait(self, model: str, now: float) -> float:
        inst = self.instances[model]
        return queue_wait(
            sum(1 for w in self._waiters if w.waiter.model == model and not w.admin),
            list(self._took.get(model, ())),
            [now - lease.since for lease in inst.leases],
            self.rules()[model].slots or max(inst.in_flight, 1),
            None if inst.state is State.READY else self.store.typical_load_seconds(model) or 5.0,
        )

    async def start(self, model: str, timeout: float | None = None) -> Instance:
        """Start ``model`` (swapping if needed) and wait until it is ready."""
        inst = self.instances[model]

        def fresh() -> None:  # a failed model is tried again at once, its count reset
            if inst.state is State.FAILED:
                inst.failures, inst.retry_at, inst.restart = 0, None, False
                inst.state = State.STOPPED

        await self._applied(fresh)
        return (await self.acquire(model, timeout=timeout, admin=True)).instance

    async def stop(self, model: str) -> None:
        """Stop ``model`` once its in-flight requests finish (bounded by the drain timeout)."""
        inst = self.instances[model]
        run = inst.generation

        def wanted() -> None:
            nonlocal run
            run = inst.generation  # the run it stops (the loop may have started one since)
            if inst.state is State.FAILED:  # not running: no retry either
                inst.state, inst.retry_at, inst.restart = State.STOPPED, None, False
            elif inst.state is not State.STOPPED:
                inst.stop_wanted = True

        await self._applied(wanted)
        # That run ended: stopped, failed, or followed by the next (waiters start it at once)
        await self._until(
            lambda: inst.state in (State.STOPPED, State.FAILED) or inst.generation > run
        )

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self._changed.wait()

    def waiting(self) -> dict[str, int]:
        """Requests waiting for each model (admin starts not counted)."""
        return dict(Counter(w.waiter.model for w in self._waiters if not w.admin))

    def keep_alive(self, model: str, seconds: float | None) -> None:
        """A client's idle time for ``model``'s running instance (Ollama's ``keep_alive``):
        ``0`` stops it once idle, ``inf`` never; None gives it back its ``ttl``."""
        self._post(functools.partial(setattr, self.instances[model], "keep_alive", seconds))

    async def set_mode(self, node: str, mode: str) -> None:
        """Put ``node`` in ``mode``; if the mode says so, drain and stop its models."""
        handle = self.nodes[node]
        await handle.set_mode(mode, stop_models=False)  # refusals start now
        self._kick()
        if self.config.nodes[node].modes[mode].stop_models:
            on_node = [m for m in self.config.models if self.config.node_of(m) == node]
            await asyncio.gather(*(self.stop(m) for m in on_node))

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for inst in self.instances.values():
            if inst.task is not None and not inst.task.done():
                inst.task.cancel()
        for entry in self._waiters:
            if not entry.future.done():
                why = "the gateway is shutting down"
                entry.future.set_exception(Refused(Code.MODEL_UNAVAILABLE, why))
        await asyncio.gather(*(node.close() for node in self.nodes.values()))
