"""Commands about the state on disk: back it up and restore it, while the gateway serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.config_files import load_or_exit
from modelyard.cli.options import DEFAULT_CONFIG, ConfigOpt, JsonOpt
from modelyard.cli.output import err, out

NodeOpt = Annotated[
    str | None, typer.Option("--node", help="An agent's state (that node's), not the gateway's.")
]


def backup(
    file: Annotated[Path, typer.Argument(help="The backup file to write (a tar file).")],
    config: ConfigOpt = DEFAULT_CONFIG,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up the state (conversations, request log, decisions, modes) while it serves."""
    from modelyard.backup import BackupError, backup, summary

    state = _state_dir(config, node)
    try:
        manifest = backup(state, file)
    except (BackupError, OSError) as exc:
        err.print(f"backup failed, nothing written: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps(summary(manifest)))
        return
    for name, copied in manifest.files.items():
        rows = ", ".join(f"{t} {n}" for t, n in copied.rows.items())
        out.print(f"  {name} (schema {copied.schema}): {rows}", highlight=False)
    out.print(f"[green]✓[/] backed up {state} to {file}", highlight=False)


def restore(
    file: Annotated[Path, typer.Argument(help="A file written by `modelyard backup`.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    node: NodeOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before replacing.")] = False,
) -> None:
    """Replace the state with a backup's; a file that is not one, or is newer, changes nothing."""
    from modelyard.backup import BackupError, read_manifest, restore

    state = _state_dir(config, node)
    try:
        manifest = read_manifest(file)
    except BackupError as exc:
        err.print(f"{exc}: nothing was changed", highlight=False)
        raise typer.Exit(1) from None
    names = ", ".join(manifest.files)
    if not yes and not typer.confirm(
        f"replace {names} in {state} with the backup of modelyard {manifest.modelyard}?"
    ):
        raise typer.Exit(1)
    try:
        restore(state, file)
    except (BackupError, OSError) as exc:
        err.print(f"{exc}: nothing was changed", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"[green]✓[/] restored {names} in {state} from {file}", highlight=False)
    out.print(
        "a running gateway reads the conversations, request log and decisions from it now; "
        "the node modes it keeps in memory take the restored ones at its next start",
        highlight=False,
    )


def _state_dir(config: Path, node: str | None) -> Path:
    cfg = load_or_exit(config)
    if node is None:
        return cfg.state_dir
    if node not in cfg.agent_nodes:
        agents = ", ".join(cfg.agent_nodes)
        err.print(f"{node!r} is not an agent's node in {config}; those are: {agents}")
        raise typer.Exit(2)
    return cfg.agent_state_dir(node)
