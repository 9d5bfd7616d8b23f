"""``modelyard doctor``: check this machine before the first serve (``modelyard.doctor``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from modelyard.cli.options import DEFAULT_CONFIG, ConfigOpt, JsonOpt
from modelyard.cli.output import err, out

STYLES = {"ok": "green", "warn": "yellow", "fail": "red", "info": "blue"}


def doctor(
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
    node: Annotated[
        str | None,
        typer.Option("--node", help="Check as this node's agent would (its engines, GPUs, port)."),
    ] = None,
) -> None:
    """Check this machine for the config: what is wrong, and how to fix it.

    Exit 0 when nothing failed (warnings do not fail), 1 when something did, 2 for usage
    errors.
    """
    # Imported here: `modelyard --help` should stay quick.
    from modelyard import doctor as checkup

    try:
        ctx = checkup.load(config, node)
    except checkup.DoctorUsageError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    results = checkup.run_checks(ctx)
    if as_json:
        print(checkup.as_json(results))
    else:
        for result in results:
            first, *rest = checkup.text_lines(result)
            mark = checkup.MARKS[result.status]
            line = escape(first.removeprefix(mark))
            out.print(f"[{STYLES[result.status]}]{mark}[/]{line}", highlight=False)
            for more in rest:
                out.print(more, highlight=False, markup=False)
        out.print(checkup.summary(results), highlight=False, markup=False)
    raise typer.Exit(1 if checkup.failed(results) else 0)
