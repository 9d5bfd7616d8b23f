"""Commands and helpers about config files on disk: check, init, and loading one or exiting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.output import err, out
from modelyard.config import Config, ConfigError, load_config


def check(files: Annotated[list[Path], typer.Argument(help="Config files to validate.")]) -> None:
    """Validate config files; print every error and exit 1 if any."""
    failed = False
    for file in files:
        try:
            cfg = load_config(file)
        except ConfigError as exc:
            failed = True
            for issue in exc.issues:
                err.print(f"[red]✗[/] {issue}", highlight=False)
            continue
        out.print(f"[green]✓[/] {file}: {len(cfg.models)} model(s)", highlight=False)
        for warning in config_warnings(cfg):
            out.print(f"  [yellow]![/] {warning}", highlight=False)
    raise typer.Exit(1 if failed else 0)


def config_warnings(cfg: Config) -> list[str]:
    """Things that validate but will not run here (absent weights files), or need a look."""
    notes = list(cfg.warnings)
    if problem := cfg.open_without_keys():
        notes.append(f"listen: {problem}; `modelyard serve` refuses it as it is")
    for name, model in cfg.models.items():
        weights = getattr(model, "weights", None)
        if weights is not None and not Path(weights).is_file():
            notes.append(f"{name}: weights file not found here: {weights}")
    return notes


def init(
    folder: Annotated[Path, typer.Argument(help="Folder to search for .gguf files.")],
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("modelyard.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite the output file.")] = False,
) -> None:
    """Write a starter config with one model per GGUF file found in FOLDER."""
    from modelyard.starter import starter_config

    if output.exists() and not force:
        err.print(f"{output} exists; use --force to overwrite it")
        raise typer.Exit(1)
    try:
        text, count = starter_config(folder, output)
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    output.write_text(text, encoding="utf-8")
    out.print(f"wrote {output} with {count} model(s); check it with: modelyard check {output}")


def load_or_exit(path: Path) -> Config:
    """The config at ``path``; if it does not validate, print every error and exit 1."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(f"[red]✗[/] {issue}", highlight=False)
        err.print("the config did not validate: nothing was started")
        raise typer.Exit(1) from None
