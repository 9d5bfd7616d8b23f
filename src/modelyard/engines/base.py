"""What every engine adapter provides."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True)
class Launch:
    """A server process to start."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    health_path: str = "/health"


def missing_program(program: str, hint: str) -> str | None:
    """Why ``program`` cannot run (not on PATH, not an executable path), or None."""
    if shutil.which(program) is not None:
        return None
    return f"{program!r} not found: not on PATH and not an executable path ({hint})"


def gpu_env(gpus: list[int] | None, none: str = "") -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for a model placed on ``gpus``; ``[]`` (CPU only) hides all.

    ``None`` (not placed) leaves the variable alone. ``none`` is what hides every GPU for
    this engine: the empty string for CUDA programs, ``-1`` for Ollama.
    """
    if gpus is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus) if gpus else none}


@dataclass(frozen=True)
class Upstream:
    """Where requests for a ready instance go."""

    base_url: str  # up to and including /v1
    model: str | None = None  # name to put in the forwarded body; None: leave it as sent
    headers: dict[str, str] = field(default_factory=dict)


class Engine:
    """One kind of model server; each kind subclasses this in its own module.

    ``host`` is the address the server listens on and is reached at: 127.0.0.1 on the
    gateway's own machine, the agent's address on another node.
    """

    kind = "base"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host

    def problem(self) -> str | None:
        """Why the model cannot start now (missing file, missing binary), or None."""
        return None

    def launch(self, port: int) -> Launch | None:
        """The process to run on ``port``; None when nothing is started (remote)."""
        return None

    def upstream(self, port: int) -> Upstream:
        """Where to send requests once ready."""
        raise NotImplementedError

    async def after_ready(self, session: aiohttp.ClientSession, port: int) -> None:
        """Once the health probe passes: e.g. load the model into a daemon (Ollama)."""

    async def before_stop(self, session: aiohttp.ClientSession, port: int) -> None:
        """Before SIGTERM: e.g. unload the model from a daemon (Ollama)."""


NOTE = "[modelyard "  # how modelyard's own lines in an engine log begin


class StartError(Exception):
    """An instance failed to start: ``str()`` says why, ``tail`` has the engine's last lines."""

    def __init__(self, reason: str, tail: list[str] | None = None) -> None:
        engine_lines = (ln for ln in reversed(tail or []) if ln.strip() and not ln.startswith(NOTE))
        last = next(engine_lines, None)
        super().__init__(f"{reason}; last output: {last.strip()}" if last else reason)
        self.tail = tail or []
