"""What every engine provides, and what it may ask of the gateway.

An engine is one module of this package holding three things: its config class (a
``ModelBase`` with ``engine:`` narrowed to its tag, and the facts only it knows: context
window, slots, GGUF file), its adapter (an ``Engine`` subclass: how its server is started,
probed and reached) and ``ENGINE``, the adapter class, by which ``catalog`` finds it.

Engines do no network I/O of their own: the calls they need (load a model into a daemon,
probe a URL) go through ``Http``, which the gateway implements (``engine_calls``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from modelyard.model_spec import ModelBase

if TYPE_CHECKING:
    from modelyard.config.schema import Engines


@dataclass(frozen=True)
class Launch:
    """A server process to start."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    health_path: str | None = "/health"  # None: ready when it accepts a connection


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


class Http(Protocol):
    """The HTTP calls an engine may ask for. Both raise OSError (``ConnectionError``,
    ``TimeoutError``) when the server cannot be reached in time."""

    async def post_json(
        self, url: str, body: Mapping[str, Any], timeout: float | None
    ) -> tuple[int, str]:
        """POST ``body`` as JSON; the status and the answer's text. ``timeout`` None:
        only connecting is bounded."""
        ...

    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> int:
        """GET ``url``; the status."""
        ...


M = TypeVar("M", bound=ModelBase)


class Engine(Generic[M]):
    """One kind of model server; each kind subclasses this in its own module.

    ``host`` is the address the server is reached at: 127.0.0.1 on the gateway's own
    machine, the agent's address on another node; ``listen`` the one it binds, ``host``
    unless the node says otherwise (``nodes.NAME.engine_listen``: inside a NAT, such as
    WSL2's, whose outside address the gateway reaches). ``settings`` is the config's
    ``engines:`` section (settings that hold for every model of one engine).
    """

    kind: ClassVar[str]  # the tag of ``engine:`` in the config file
    config: ClassVar[type[ModelBase]]  # its config class, whose ``engine`` is ``kind``
    probes_url: ClassVar[bool] = False  # serves from a URL that may go down (``down``)

    def __init__(
        self,
        model: M,
        host: str = "127.0.0.1",
        settings: Engines | None = None,
        listen: str | None = None,
    ) -> None:
        self.model = model
        self.host = host
        self.listen = listen or host
        self.settings = settings

    @property
    def local(self) -> str:
        """Where its own node reaches it: the address it binds, loopback for a wildcard."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::", "") else self.listen

    def problem(self) -> str | None:
        """Why the model cannot start now (missing file, missing binary), or None."""
        return None

    def launch(self, port: int) -> Launch | None:
        """The process to run on ``port``; None when nothing is started (remote)."""
        return None

    def upstream(self, port: int) -> Upstream:
        """Where to send requests once ready."""
        raise NotImplementedError

    async def after_ready(self, http: Http, port: int) -> None:
        """Once the health probe passes: e.g. load the model into a daemon (Ollama)."""

    async def before_stop(self, http: Http, port: int) -> None:
        """Before SIGTERM: e.g. unload the model from a daemon (Ollama)."""

    async def down(self, http: Http) -> str | None:
        """Why its URL does not serve now, or None; asked only when ``probes_url``."""
        return None
