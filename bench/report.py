"""How the bench scripts write their figures down: markdown cells and rows, the machine line.

A figure that could not be measured is NaN and shows as ``n/a``, never as a number.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from importlib.metadata import version

from procfs import cpu_model

MiB = 1024 * 1024


def fmt(x: float, digits: int = 0) -> str:
    """``x`` with thousands separators and ``digits`` decimals."""
    return "n/a" if x != x else f"{x:,.{digits}f}"


def signed(x: float) -> str:
    """A difference: always with its sign, two decimals."""
    return "n/a" if x != x else f"{x:+,.2f}"


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN where either is NaN or ``b`` is 0."""
    return a / b if b and a == a and b == b else float("nan")


def times(value: float, digits: int = 2) -> str:
    """A ratio as ``1.23x``."""
    return "n/a" if value != value else f"{value:.{digits}f}x"


def mib(n: float) -> str:
    """Bytes in MiB, one decimal."""
    return f"{n / MiB:,.1f}"


def row(cells: Iterable[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def machine() -> str:
    """The machine, as the reports' ``- machine:`` line names it."""
    return f"`nproc` = {os.cpu_count()} ({cpu_model()}), {platform.system()} {platform.release()}"


def versions(names: Iterable[str]) -> str:
    """``name version`` of each installed distribution, comma-separated."""
    return ", ".join(f"{name} {version(name)}" for name in names)
