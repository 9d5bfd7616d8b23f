"""Log lines for whoever reads stderr: a terminal, or systemd's journal.

Under systemd (``JOURNAL_STREAM`` set: stderr is the journal) a line that starts with
``<N>`` is logged at syslog priority N, so ``journalctl -u modelyard -p warning`` finds
modelyard's warnings and uvicorn's errors alike. Elsewhere the lines are as they were.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
from typing import Any

PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def under_journal() -> bool:
    """Whether stderr is systemd's journal (it sets ``JOURNAL_STREAM`` for its services)."""
    return bool(os.environ.get("JOURNAL_STREAM"))


class Prioritised(logging.Formatter):
    """Each line led by its journal priority; a mixin before any formatter class."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def log_to_stderr() -> None:
    """modelyard's own log lines (INFO and up: the Wyoming listener's, warnings) beside
    uvicorn's, in its format; uvicorn configures only its own loggers."""
    handler = logging.StreamHandler()
    fmt = "%(levelname)-9s %(name)s: %(message)s"
    handler.setFormatter(Prioritised(fmt) if under_journal() else logging.Formatter(fmt))
    mine = logging.getLogger("modelyard")
    mine.addHandler(handler)
    mine.setLevel(logging.INFO)
    mine.propagate = False


def uvicorn_logging() -> dict[str, Any]:
    """What to add to ``uvicorn.run``'s arguments: under the journal, uvicorn's own logging
    config with each formatter prioritised; elsewhere nothing (uvicorn's default)."""
    if not under_journal():
        return {}
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["()"] = _prioritised(formatter["()"])
    return {"log_config": config}


def _prioritised(dotted: str) -> type[logging.Formatter]:
    module, _, name = dotted.rpartition(".")
    base = getattr(importlib.import_module(module), name)
    return type(f"Prioritised{name}", (Prioritised, base), {})
