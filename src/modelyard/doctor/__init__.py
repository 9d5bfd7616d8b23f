"""``modelyard doctor``: check a machine before its first serve, and say what to fix.

This package's entry: the checks in order (``CHECKS``), the runner and the output. The
types the checks share (``Result``, ``Context``, ``Check``) are in ``result``; the checks,
by concern, in ``gpus`` (the config, NVML and the GPUs), ``engines``, ``models`` (weights
and memory fit), ``host`` (state dir, ports, access) and ``agents`` (agents, clocks).
Each check is independent: one that raises is reported as its own failure and the others
still run, so a half-configured machine gets every answer that can be had (a config that
does not load still gets the machine's checks).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

from modelyard.config import ConfigError, load_config
from modelyard.doctor.agents import check_agents, check_clock
from modelyard.doctor.engines import check_engines
from modelyard.doctor.gpus import check_config, check_gpus
from modelyard.doctor.host import check_access, check_ports, check_state_dir
from modelyard.doctor.models import check_memory, check_weights
from modelyard.doctor.result import Check, CheckFn, Context, Result, Status

__all__ = [
    "CHECKS",
    "MARKS",
    "Check",
    "CheckFn",
    "Context",
    "DoctorUsageError",
    "Result",
    "Status",
    "as_json",
    "failed",
    "load",
    "run_checks",
    "summary",
    "text_lines",
]

MARKS: dict[Status, str] = {"ok": "✓", "warn": "!", "fail": "✗", "info": "i"}


class DoctorUsageError(ValueError):
    """The command was asked something that cannot be (``--node`` naming no agent)."""


CHECKS: tuple[Check, ...] = (
    Check("config", check_config, needs_config=False),
    Check("gpus", check_gpus, needs_config=False),
    Check("engines", check_engines, needs_config=False),
    Check("weights", check_weights),
    Check("memory", check_memory),
    Check("state dir", check_state_dir),
    Check("ports", check_ports),
    Check("access", check_access),
    Check("agents", check_agents),
    Check("clock", check_clock),
)


def load(config_path: Path, node: str | None) -> Context:
    """The context for ``config_path`` checked as the gateway, or as ``node``'s agent.

    Raises DoctorUsageError when the config loads and ``node`` is not one of its agents.
    """
    ctx = Context(config_path, agent=node is not None, node=node)
    try:
        ctx.config = load_config(config_path)
    except ConfigError as exc:
        ctx.config_issues = [str(i) for i in exc.issues]
        return ctx
    except Exception as exc:  # doctor reports; it never crashes on a broken file
        ctx.config_issues = [f"{config_path}: {type(exc).__name__}: {exc}"]
        return ctx
    cfg = ctx.config
    if node is None:
        ctx.node = cfg.local_node
    elif node not in cfg.agent_nodes:
        raise DoctorUsageError(
            f"{node!r} is not a node with an url in {config_path}; those are: "
            + (", ".join(cfg.agent_nodes) or "none (every model runs on the gateway's machine)")
        )
    return ctx


def run_checks(ctx: Context, checks: Sequence[Check] | None = None) -> list[Result]:
    """Every check's results, in the checks' order; checks that block on the network run
    together, the others one after another in a thread beside them."""
    if checks is None:
        checks = CHECKS
    return asyncio.run(_run_all(ctx, checks))


async def _run_all(ctx: Context, checks: Sequence[Check]) -> list[Result]:
    runnable = [c for c in checks if ctx.config is not None or not c.needs_config]
    skipped = [c.name for c in checks if c not in runnable]
    plain = [c for c in runnable if not inspect.iscoroutinefunction(c.run)]
    waiting = [c for c in runnable if inspect.iscoroutinefunction(c.run)]

    def run_plain() -> list[list[Result]]:
        return [_guarded_sync(c, ctx) for c in plain]

    async def run_waiting() -> list[list[Result]]:
        return list(await asyncio.gather(*(_guarded_async(c, ctx) for c in waiting)))

    found_plain, found_waiting = await asyncio.gather(asyncio.to_thread(run_plain), run_waiting())
    by_check: dict[Check, list[Result]] = dict(zip(plain, found_plain, strict=True))
    by_check |= dict(zip(waiting, found_waiting, strict=True))
    results = [r for c in runnable for r in by_check[c]]
    if skipped:
        results.append(
            Result(
                "skipped",
                "info",
                f"not checked without a config that loads: {', '.join(skipped)}",
                "fix the config (see the config check above), then run doctor again",
            )
        )
    return results


def _crashed(check: Check, exc: BaseException) -> list[Result]:
    return [
        Result(
            check.name,
            "fail",
            f"the check could not run: {type(exc).__name__}: {exc}",
            "a bug in modelyard doctor, or something it did not expect here; the other "
            "checks still ran",
        )
    ]


def _guarded_sync(check: Check, ctx: Context) -> list[Result]:
    try:
        found = check.run(ctx)
        assert isinstance(found, list)
        return found
    except Exception as exc:
        return _crashed(check, exc)


async def _guarded_async(check: Check, ctx: Context) -> list[Result]:
    try:
        found = check.run(ctx)
        assert inspect.isawaitable(found)
        return list(await found)
    except Exception as exc:
        return _crashed(check, exc)


def failed(results: Sequence[Result]) -> bool:
    """Whether any result is a failure (warnings do not fail)."""
    return any(r.status == "fail" for r in results)


def text_lines(result: Result) -> list[str]:
    """A result as text: its mark, name and message, then its fix indented."""
    lines = [f"{MARKS[result.status]} {result.name}: {result.message}"]
    if result.fix and result.status != "ok":
        lines.append(f"    fix: {result.fix}")
    return lines


def summary(results: Sequence[Result]) -> str:
    """One line: how many failed, warned and passed."""
    counts = {s: sum(r.status == s for r in results) for s in MARKS}
    return (
        f"{counts['fail']} failed, {counts['warn']} warning(s), {counts['ok']} ok, "
        f"{counts['info']} note(s)"
    )


def as_json(results: Sequence[Result]) -> str:
    """The ``--json`` output: a list of ``{name, status, message, fix}``."""
    return json.dumps([r.as_dict() for r in results], indent=2)
