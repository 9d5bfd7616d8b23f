"""A ``modelyard serve`` under test: its config, process, admin API, shutdown and store.

Two configs are shared. ``write_bench_config``: the stub, the paced stub, Gemma and two cold
Gemmas, on which bench/compare.py, bench/instructions.py and bench/profile_gateway.py measure.
``write_stub_config``: one ``command`` model, ``stub``, for bench/soak.py and
bench/store_growth.py. Each gets its own state dir in the run's temporary folder, no API keys.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cold import cold_model
from harness import BENCH, PROMPT, REPO, Running, http_json, launch, wait_http
from procfs import alive

STUB_CHUNKS = 32  # per stream, from the bench config's stubs
MESSAGES = [{"role": "user", "content": PROMPT}]

# --------------------------------------------------------------------------- configs


def stub_command(script: str, chunks: int, *more: str) -> list[str]:
    """A stub of bench/ as a ``command`` engine: modelyard fills in ``{port}``."""
    return [sys.executable, str(BENCH / script), "--port", "{port}", "--chunks", str(chunks), *more]


def command_model(command: list[str], slots: int, queue: int) -> str:
    """The config of a ``command`` model (a block under ``models``)."""
    return (
        f"    engine: command\n    command: {json.dumps(command)}\n"
        f"    slots: {slots}\n    queue: {queue}\n"
    )


def write_config(tmp: Path, port: int, models: dict[str, str], extra: str = "") -> Path:
    """modelyard.yaml in ``tmp``: listening on ``port``, state in ``tmp/state``, ``models``
    (name: block), then ``extra`` top-level settings."""
    config = tmp / "modelyard.yaml"
    blocks = "".join(f"  {name}:\n{block}" for name, block in models.items())
    config.write_text(
        f"listen: 127.0.0.1:{port}\nstate_dir: {tmp / 'state'}\nmodels:\n{blocks}{extra}",
        encoding="utf-8",
    )
    return config


def write_bench_config(
    tmp: Path, port: int, weights: Path, parallel: int, gap: float = 0.02
) -> Path:
    """The stub and the paced stub (``slots: 256``, ``queue: 1000``, so that admission is not
    what is measured), Gemma for the throughput part, two cold Gemmas in one swap group."""
    paced = stub_command("paced_stub.py", STUB_CHUNKS, "--gap", str(gap))
    gemma = f"    engine: llama.cpp\n    weights: {weights}\n    context: {512 * parallel}\n"
    gemma += f"    parallel: {parallel}\n    args: [--threads, '2']\n"
    models = {
        "stub": command_model(stub_command("upstream_stub.py", STUB_CHUNKS), 256, 1000),
        "paced": command_model(paced, 256, 1000),
        "gemma": gemma,
        # Set up exactly as bench/cold_start.py starts llama-server directly.
        "cold": cold_model(weights, "swap"),
        "cold-b": cold_model(weights, "swap"),
    }
    return write_config(tmp, port, models)


def write_stub_config(
    tmp: Path, port: int, chunks: int = 16, slots: int = 16, extra: str = ""
) -> Path:
    """One model, ``stub``: bench/upstream_stub.py, ``queue: 100``."""
    stub = command_model(stub_command("upstream_stub.py", chunks), slots, 100)
    return write_config(tmp, port, {"stub": stub}, extra)


# --------------------------------------------------------------------------- the process


def python() -> str:
    """The repo's venv Python, where modelyard is installed; this one if there is none."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


def serve_argv(config: Path) -> list[str]:
    return [python(), "-m", "modelyard", "serve", "-c", str(config)]


@dataclass
class GatewayProcess:
    """A started gateway: its process, base URL and log, and its admin API."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path | None

    def wait(self, within: float = 60.0) -> float:
        """Until /health answers 200; seconds it took. Fails if the gateway exits."""
        return wait_http(self.base + "/health", self.proc, self.log, within)

    def model(self, name: str) -> dict[str, Any]:
        models = http_json(self.base + "/admin/models")["models"]
        found: dict[str, Any] = next(m for m in models if m["name"] == name)
        return found

    def start(self, name: str) -> dict[str, Any]:
        http_json(f"{self.base}/admin/models/{name}/start", "POST")
        return self.model(name)

    def stop(self, name: str) -> None:
        http_json(f"{self.base}/admin/models/{name}/stop", "POST")

    def generation(self, name: str) -> int:
        """How many times ``name`` has been started (its instance is NAME#N)."""
        instance = self.model(name)["instance"]
        return int(instance.rsplit("#", 1)[1]) if instance else 0


def launch_gateway(
    config: Path,
    port: int,
    log: Path | None,
    wrapper: Sequence[str] = (),
    argv: list[str] | None = None,
) -> GatewayProcess:
    """``modelyard serve`` on ``config`` (or ``argv``), under ``wrapper`` (valgrind) if given,
    its output in ``log``; not waited for."""
    proc = launch([*wrapper, *(argv or serve_argv(config))], log)
    return GatewayProcess(proc, f"http://127.0.0.1:{port}", log)


def start_gateway(
    running: Running, config: Path, port: int, log: Path, argv: list[str] | None = None
) -> GatewayProcess:
    """``launch_gateway``, stopped with ``running``, and answering /health."""
    gw = launch_gateway(config, port, log, argv=argv)
    running.add(gw.proc)
    gw.wait()
    return gw


def stop_gateway(gw: GatewayProcess, engine: int) -> dict[str, Any]:
    """SIGTERM; clean = exit 0 or by SIGTERM (uvicorn re-raises the signal it caught once
    its shutdown is done) with uvicorn's "Finished server process" logged, engine gone.
    A gateway that has exited already did not shut down cleanly."""
    if gw.proc.poll() is not None:
        gone = not alive(engine)
        return {"exit_code": gw.proc.returncode, "exit_s": 0.0, "engine_gone": gone, "clean": False}
    began = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = gw.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
        gw.proc.kill()
        gw.proc.wait(10)
    exit_s = time.monotonic() - began
    deadline = time.monotonic() + 15  # a killed engine may take a moment to be reaped
    while alive(engine) and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = gw.log.read_text(errors="replace") if gw.log is not None else ""
    finished = "Finished server process" in logged
    gone = not alive(engine)
    clean = code in (0, -signal.SIGTERM) and finished and gone
    return {"exit_code": code, "exit_s": round(exit_s, 2), "engine_gone": gone, "clean": clean}


# --------------------------------------------------------------------------- the store


def count_rows(db: Path) -> dict[str, int]:
    """Rows of the request log (table ``requests``, or ``request_log`` in newer schemas) and
    of ``decisions``; -1 for a table that is not there."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        log = "request_log" if "request_log" in names else "requests"
        return {
            key: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if table in names
            else -1
            for key, table in (("requests", log), ("decisions", "decisions"))
        }
    finally:
        con.close()
