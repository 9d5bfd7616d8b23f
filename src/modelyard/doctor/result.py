"""What ``modelyard doctor``'s checks share: a check's finding (``Result``), what every check
reads (``Context``: the config, the node checked, readings taken once), and ``Check``.

Apart from the runner (``modelyard.doctor``) so that the check modules can import these
types while the runner imports the checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelyard.config import Config

Status = Literal["ok", "warn", "fail", "info"]


@dataclass(frozen=True)
class Result:
    """One finding: what was looked at, how it stands, and how to fix it when it is wrong."""

    name: str
    status: Status
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form: ``name``, ``status``, ``message``, ``fix`` (null when none)."""
        return asdict(self)


@dataclass
class Context:
    """What every check reads: the config (None when it does not load) and this machine.

    ``node`` is the node whose machine this is: ``--node``'s (``agent`` is then True), else
    the gateway's own (None when every node has an url: the gateway then runs no model).
    ``memo`` keeps readings several checks share (GPUs, llama-server's probe), taken once.
    """

    config_path: Path
    config: Config | None = None
    config_issues: list[str] = field(default_factory=list)
    node: str | None = None
    agent: bool = False
    memo: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, read: Callable[[], Any]) -> Any:
        """``read()``'s value, read on the first call for ``key`` only."""
        if key not in self.memo:
            self.memo[key] = read()
        return self.memo[key]

    @property
    def models_here(self) -> list[str]:
        """The models this node runs (not the parts it holds of models across nodes)."""
        cfg = self.config
        if cfg is None or self.node is None:
            return []
        return [m for m in cfg.models if cfg.node_of(m) == self.node]


CheckFn = Callable[[Context], list[Result]] | Callable[[Context], Awaitable[list[Result]]]


@dataclass(frozen=True)
class Check:
    """A named check; ``needs_config``: skipped (and said so) when the config does not load."""

    name: str
    run: CheckFn
    needs_config: bool = True
