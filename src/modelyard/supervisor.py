"""The supervisor: the engine processes of one node (spawn, readiness, logs, stop).

It knows nothing of requests or swap groups; the scheduler tells it what to start and
stop and hears from it when a process ends on its own.

No engine outlives the gateway or agent that started it: an engine is SIGKILLed when its
parent dies (``PR_SET_PDEATHSIG``), and each engine is recorded in the store until it ends,
so that the next start of the gateway or agent stops what a killed run left behind (its
engines' children, which the death signal does not reach): ``modelyard.reaper``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from modelyard.engine_calls import SessionHttp
from modelyard.engine_log import LOG_LINES as LOG_LINES  # the engine log: ``engine_log``
from modelyard.engine_log import InstanceLog
from modelyard.engines.base import Engine, Launch, Upstream
from modelyard.errors import StartError
from modelyard.reaper import TAG, boot_id, proc_stat, reap_leftovers
from modelyard.store import EngineRow, Store

log = logging.getLogger("modelyard.supervisor")


def describe_exit(code: int | None) -> str:
    """``code 1`` or ``signal SIGILL``, as a person reads an exit status."""
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class EngineProcess:
    """One running server process, in its own process group so a stop reaches its children."""

    def __init__(self, launch: Launch, port: int, log: InstanceLog, host: str) -> None:
        self.launch = launch
        self.port = port
        self.host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.tag = uuid.uuid4().hex  # marks its processes, children included, in /proc
        self.started: int | None = None  # its start time (``proc_stat``), once recorded
        self._pump: asyncio.Task[None] | None = None
        self._spoke = asyncio.Event()  # set on each line of output: a hint to probe again

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(self) -> None:
        self.log.note("starting: " + " ".join(self.launch.argv))
        self.proc = await asyncio.create_subprocess_exec(
            *self.launch.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **self.launch.env, TAG: self.tag},
            cwd=self.launch.cwd,
            start_new_session=True,
            preexec_fn=(
                functools.partial(_die_with_parent, os.getpid())
                if sys.platform == "linux"
                else None
            ),
        )
        self._pump = asyncio.create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the stream limit: keep what fits
                line = b"[line too long, cut]\n"
            if not line:
                self._spoke.set()
                return
            self.log.write(line)
            self._spoke.set()

    async def exited(self) -> int:
        """The engine's exit status, as soon as it has exited.

        Not ``proc.wait()``: on Python 3.11 that also waits for the output pipe to close,
        which a child of the engine that lives on (an ollama runner) keeps open for good.
        """
        assert self.proc is not None
        while True:
            if self.proc.returncode is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)

    async def wait_exit(self) -> int:
        """Wait until the engine has exited and its output is read (that, 2 s at most)."""
        code = await self.exited()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 2)
        return code

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        """Poll the health path until it answers 200; raise StartError on exit or timeout."""
        assert self.proc is not None
        url = f"http://{self.host}:{self.port}{self.launch.health_path}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                status = describe_exit(self.proc.returncode)
                raise StartError(f"exited with {status} while starting")
            if self.launch.health_path is None:
                if await self._accepts():
                    return
            else:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
            if time.monotonic() >= deadline:
                probe = f"GET {url} never answered 200"
                if self.launch.health_path is None:
                    probe = f"{self.host}:{self.port} never accepted a connection"
                raise StartError(f"not ready after {timeout:g}s ({probe})")
            # Engines print a line when they finish loading; probing on output (at most every
            # 20 ms) sees readiness at once, the 250 ms poll covers the silent ones.
            self._spoke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spoke.wait(), 0.25)
            await asyncio.sleep(0.02)

    async def _accepts(self) -> bool:
        """Does it accept a connection (a server without HTTP: an rpc-server)?"""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 2)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the group, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.exited(), grace)
            except TimeoutError:
                self.log.note(f"still running {grace:g}s after SIGTERM: SIGKILL")
        # The whole group, whether the engine went by itself or not: children that outlived
        # it would keep its GPU memory, and its output pipe open.
        self.kill_group()
        return await self.wait_exit()

    def kill_group(self) -> None:
        """SIGKILL to the engine's process group: whatever of it is left."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGKILL it when the gateway dies, even by SIGKILL (Linux).

    SIGKILL, not SIGTERM: an engine that ignores SIGTERM, or hangs in its own shutdown, would
    otherwise live on with its GPU memory. The signal comes when the thread that started the
    engine ends (the event loop's), and reaches the engine only, not its children: those are
    left to ``reap_leftovers`` at the next start.
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl: no signal will come
        os._exit(1)


def free_port(taken: set[int], ports: range | None = None) -> int:
    """A port free on loopback now and not handed to another instance of ours: any, or
    the first such of ``ports`` (a node's ``engine_ports``)."""
    if ports is not None:
        for port in ports:
            if port not in taken and _bindable(port):
                return port
        raise StartError(
            f"no free port in engine_ports {ports.start}-{ports.stop - 1}: each is in use "
            "(by our engines or another program); widen the range"
        )
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise StartError("no free port on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Supervisor:
    """The instances of this node: at most one process per model."""

    def __init__(
        self,
        log_dir: Path,
        on_exit: Callable[[str, int], None],
        stop_grace: float = 10.0,
        store: Store | None = None,
        ports: range | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.ports = ports  # its node's engine_ports; None: any free port
        self.on_exit = on_exit  # called when a process ends without being asked to
        self.stop_grace = stop_grace
        self.store = store  # where each engine is recorded while it runs, for the reaper
        me = proc_stat(os.getpid())
        self._owner = (os.getpid(), me.started if me else 0)
        self._boot = boot_id()
        self.processes: dict[str, EngineProcess] = {}
        self.engines: dict[str, Engine[Any]] = {}
        self.logs: dict[str, InstanceLog] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    def log(self, model: str) -> InstanceLog:
        if model not in self.logs:
            safe = model.replace("/", "_").replace(":", "_")
            self.logs[model] = InstanceLog(self.log_dir / f"{safe}.log")
        return self.logs[model]

    async def start(
        self, model: str, engine: Engine[Any], timeout: float
    ) -> tuple[Upstream, int | None]:
        """Start ``model`` and wait until it is ready; returns where to reach it and its pid."""
        log = self.log(model)
        problem = engine.problem()
        if problem:
            log.note(f"cannot start: {problem}")
            raise StartError(problem)
        taken = {p.port for p in self.processes.values()}
        port = free_port(taken, self.ports)
        launch = engine.launch(port)
        if launch is None:
            return engine.upstream(port), None
        for attempt in range(3):
            proc = EngineProcess(launch, port, log, engine.listen)  # probed where it binds
            await proc.spawn()
            self._record(model, proc)
            self.processes[model] = proc
            try:
                await proc.wait_ready(self._client(), timeout)
                await engine.after_ready(SessionHttp(self._client()), port)
            except StartError as exc:
                await self._end(proc)
                self.processes.pop(model, None)
                last = "\n".join(log.tail(15))
                if attempt < 2 and "address already in use" in last.lower():
                    port = free_port(taken | {port}, self.ports)  # taken since: another
                    launch = engine.launch(port)
                    assert launch is not None
                    continue
                failure = StartError(str(exc), log.tail(15))
                log.note(f"start failed: {failure}")
                raise failure from exc
            except BaseException:
                await self._end(proc)
                self.processes.pop(model, None)
                raise
            self.engines[model] = engine
            log.note(f"ready on port {port} (pid {proc.pid})")
            self._watchers[model] = asyncio.create_task(self._watch(model, proc))
            return engine.upstream(port), proc.pid
        raise StartError("could not find a free port")

    def _record(self, model: str, proc: EngineProcess) -> None:
        """Put the engine in the store until it ends: a later run reaps it if we die first."""
        stat = proc_stat(proc.pid) if proc.pid is not None else None
        if self.store is None or proc.pid is None or stat is None:
            return
        proc.started = stat.started
        row = EngineRow(
            pid=proc.pid,
            started=stat.started,
            pgid=stat.pgid,
            boot=self._boot,
            model=model,
            argv0=proc.launch.argv[0],
            tag=proc.tag,
            owner_pid=self._owner[0],
            owner_started=self._owner[1],
        )
        with contextlib.suppress(sqlite3.Error):  # a full disk must not stop the engine
            self.store.add_engine(row)

    def _forget(self, proc: EngineProcess) -> None:
        if self.store is not None and proc.pid is not None and proc.started is not None:
            with contextlib.suppress(sqlite3.Error):
                self.store.drop_engine(proc.pid, proc.started)

    async def _end(self, proc: EngineProcess) -> int | None:
        """Stop ``proc`` (its whole group) and forget it."""
        code = await proc.stop(self.stop_grace)
        self._forget(proc)
        return code

    async def reap(self) -> list[str]:
        """Stop what a previous run on this store left running (``reap_leftovers``)."""
        return await reap_leftovers(self.store) if self.store is not None else []

    async def _watch(self, model: str, proc: EngineProcess) -> None:
        code = await proc.exited()
        if self.processes.get(model) is proc and model not in self._stopping:
            self.processes.pop(model, None)
            proc.kill_group()  # its children, orphans now: they would keep its GPU memory
            self._forget(proc)
            await proc.wait_exit()  # its last lines, for the log and the error
            self.log(model).note(f"exited unexpectedly with {describe_exit(code)}")
            self.on_exit(model, code)

    async def stop(self, model: str, reason: str) -> None:
        """Stop ``model``'s process: SIGTERM, then SIGKILL after the grace period."""
        proc = self.processes.get(model)
        if proc is None:
            return
        self._stopping.add(model)
        try:
            self.log(model).note(f"stopping: {reason}")
            engine = self.engines.pop(model, None)
            if engine is not None:
                try:
                    await asyncio.wait_for(
                        engine.before_stop(SessionHttp(self._client()), proc.port), 10
                    )
                except Exception as exc:  # unloading is a courtesy; the process stops anyway
                    self.log(model).note(f"before stop: {exc!r}")
            code = await self._end(proc)
            self.log(model).note(f"stopped (exit code {code})")
        finally:
            self._stopping.discard(model)
            self.processes.pop(model, None)
            watcher = self._watchers.pop(model, None)
            if watcher is not None:
                watcher.cancel()

    async def close(self) -> None:
        """Stop everything (the gateway is shutting down)."""
        await asyncio.gather(*(self.stop(m, "shutdown") for m in list(self.processes)))
        if self._session is not None:
            await self._session.close()
        for log in self.logs.values():
            log.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session
