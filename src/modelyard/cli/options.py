"""The command-line options several commands share, and their defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path, typer.Option("-c", "--config", help="Config file.")]
UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="MODELYARD_URL", help="Gateway to talk to."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_CONFIG = Path(os.environ.get("MODELYARD_CONFIG", "modelyard.yaml"))
DEFAULT_URL = "http://127.0.0.1:8000"
