"""What every engine adapter provides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Launch:
    """A server process to start."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    health_path: str = "/health"


@dataclass(frozen=True)
class Upstream:
    """Where requests for a ready instance go."""

    base_url: str  # up to and including /v1
    model: str | None = None  # name to put in the forwarded body; None: leave it as sent
    headers: dict[str, str] = field(default_factory=dict)


class Engine(Protocol):
    """One kind of model server."""

    kind: str

    def problem(self) -> str | None:
        """Why the model cannot start now (missing file, missing binary), or None."""

    def launch(self, port: int) -> Launch | None:
        """The process to run on ``port``; None when nothing is started (remote)."""

    def upstream(self, port: int) -> Upstream:
        """Where to send requests once ready."""
