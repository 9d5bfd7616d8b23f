"""What the bench scripts share to run what they measure: ports, processes and HTTP waits.

Free ports and listening sockets; starting a process with its output in a log, or serving on a
socket it inherits; stopping processes however a run ends; small blocking HTTP calls; waiting
until a server answers; and the two servers of bench/ itself that several scripts put up, the
upstream stub (bench/upstream_stub.py) and the bare aiohttp pass-through (bench/proxy_client.py).

bench/ is not a package: each script puts its own folder on ``sys.path`` and imports this as
``harness``. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHAT = "/v1/chat/completions"
PROMPT = "Say hello."


def log(message: str) -> None:
    """Progress, on stderr: stdout holds the report."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A port nothing listens on now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_socket() -> socket.socket:
    """A bound, listening socket for a child to inherit: no window in which the port is free."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


# --------------------------------------------------------------------------- processes


def launch(argv: Sequence[str], output: Path | None, **popen: Any) -> subprocess.Popen[bytes]:
    """``argv`` with its stdout and stderr written to the file ``output`` (discarded if None)."""
    if output is None:
        null = subprocess.DEVNULL
        return subprocess.Popen(list(argv), stdout=null, stderr=null, **popen)
    with output.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, **popen)


def spawn_serving(
    args: list[str], sock: socket.socket, wrapper: list[str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """``python ARGS --fd FD`` serving on ``sock`` (inherited), under ``wrapper`` if given."""
    fd = sock.fileno()
    cmd = [*(wrapper or []), sys.executable, *args, "--fd", str(fd)]
    proc = subprocess.Popen(cmd, pass_fds=(fd,), **popen)
    sock.close()  # the child holds it now: if it dies, connections are refused, not hung
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Running:
    """The processes a run started, stopped in reverse order however it ends."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    grace: float = 30

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, self.grace)


# --------------------------------------------------------------------------- HTTP


def http_json(url: str, method: str = "GET", timeout: float = 120) -> Any:
    """The JSON answer of a GET, or of a POST with an empty body (the admin API's actions)."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def post(url: str, body: bytes, timeout: float = 5.0) -> bytes:
    """POST a JSON body; the answer's bytes as they came (raises on a status other than 2xx)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data: bytes = resp.read()
        return data


def chat_body(
    stream: bool,
    model: str = "stub-model",
    max_tokens: int = 32,
    prompt: str = PROMPT,
    temperature: float | None = None,
) -> bytes:
    """A one-message chat completion request, compact JSON."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    if temperature is not None:
        body["temperature"] = temperature
    body["stream"] = stream
    return json.dumps(body, separators=(",", ":")).encode()


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path | None = None,
    within: float = 60.0,
    body: bytes | None = None,
) -> float:
    """Poll ``url`` (GET, or POST ``body``) until it answers 200; the seconds it took.

    Fails at once if ``proc`` exits (with the end of ``log``), or after ``within`` seconds.
    """
    began = time.monotonic()
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):  # refused, reset, or a status other than 2xx
            if body is None:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - began
            else:
                post(url, body, timeout=2)
                return time.monotonic() - began
        if time.monotonic() - began > within:
            raise RuntimeError(f"{url} did not answer 200 within {within:.0f} s")
        time.sleep(0.1)


# --------------------------------------------------------------------------- bench's own servers


def start_stub(running: Running, chunks: int) -> tuple[subprocess.Popen[bytes], str]:
    """bench/upstream_stub.py with ``chunks`` SSE chunks per stream; the process and its URL.

    It serves on a socket bound here, so it can be used as soon as this returns."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stub = [str(BENCH / "upstream_stub.py"), "--chunks", str(chunks)]
    return running.add(spawn_serving(stub, sock)), url


def proxy_role(client: str, upstream: str) -> list[str]:
    """bench/proxy_client.py's ``_proxy`` role: a minimal Starlette proxy using ``client``."""
    return [str(BENCH / "proxy_client.py"), "_proxy", "--client", client, "--upstream", upstream]


def start_bare(running: Running, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """The bare aiohttp pass-through of bench/proxy_client.py in front of ``upstream``, ready;
    the process and its base URL."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    bare = running.add(spawn_serving(proxy_role("aiohttp", upstream), sock))
    wait_http(url + CHAT, bare, within=30, body=chat_body(False))
    return bare, url
