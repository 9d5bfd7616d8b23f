"""The ``modelyard`` command: serve, check a config, and drive a running gateway."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from modelyard.config import ConfigError, load_config, split_listen
from modelyard.units import format_duration

app = typer.Typer(
    help="One OpenAI-compatible endpoint that starts, swaps and stops model servers.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path, typer.Option("-c", "--config", help="Config file.")]
UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="MODELYARD_URL", help="Gateway to talk to."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_CONFIG = Path(os.environ.get("MODELYARD_CONFIG", "modelyard.yaml"))
DEFAULT_URL = "http://127.0.0.1:8000"


@app.command()
def serve(
    config: ConfigOpt = DEFAULT_CONFIG,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT, overrides `listen:`.")] = None,
) -> None:
    """Run the gateway on the config's port."""
    import uvicorn

    from modelyard.gateway import create_app

    cfg = _load_or_exit(config)
    if listen is not None:
        try:
            split_listen(listen)
        except ValueError as exc:
            err.print(f"--listen {exc}")
            raise typer.Exit(2) from None
        cfg = cfg.model_copy(update={"listen": listen})
    host, port = split_listen(cfg.listen)
    err.print(f"modelyard: {len(cfg.models)} model(s) from {config}, listening on {host}:{port}")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="info", access_log=False)


@app.command()
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
        for warning in _warnings(cfg):
            out.print(f"  [yellow]![/] {warning}", highlight=False)
    raise typer.Exit(1 if failed else 0)


def _warnings(cfg: Any) -> list[str]:
    """Things that validate but will not run here (absent weights files)."""
    notes = []
    for name, model in cfg.models.items():
        weights = getattr(model, "weights", None)
        if weights is not None and not Path(weights).is_file():
            notes.append(f"{name}: weights file not found here: {weights}")
    return notes


@app.command()
def status(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The gateway, its models and its latest events."""
    data = _call("GET", url, "/admin/status")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    out.print(
        f"modelyard {data['version']} on {data['listen']}, up {format_duration(data['uptime_s'])}, "
        f"config {data['config']}",
        highlight=False,
    )
    _models_table(data["models"])
    if data["events"]:
        out.print("\nlatest events:")
        for ev in data["events"][:10]:
            secs = f" ({ev['seconds']:.1f}s)" if ev["seconds"] else ""
            out.print(f"  {ev['model']}: {ev['event']}{secs} {ev['detail'][:100]}", highlight=False)


@app.command()
def ps(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The models and the state of their instances."""
    data = _call("GET", url, "/admin/models")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    _models_table(data["models"])


def _models_table(models: list[dict[str, Any]]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("MODEL", "ENGINE", "STATE", "INSTANCE", "PID", "IN FLIGHT", "GROUP", "NOTE"):
        table.add_column(col, overflow="fold")
    for m in models:
        state = m["state"]
        if m.get("progress") is not None:
            state += f" {int(m['progress'] * 100)}%"
        note = m.get("error") or (m.get("reason") if m["state"] != "ready" else "") or ""
        table.add_row(
            m["name"],
            m["engine"],
            state,
            m.get("instance") or "-",
            str(m.get("pid") or "-"),
            str(m["in_flight"]),
            m.get("swap_group") or "-",
            note[:60],
        )
    out.print(table)


def _admin_action(action: str, name: str, url: str, as_json: bool) -> None:
    data = _call("POST", url, f"/admin/models/{name}/{action}", timeout=600)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        out.print(f"{data['name']}: {data['state']}", highlight=False)


@app.command()
def start(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Start a model (stopping its swap group's other members) and wait until ready."""
    _admin_action("start", name, url, as_json)


@app.command()
def stop(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Stop a model once its requests in flight finish."""
    _admin_action("stop", name, url, as_json)


@app.command()
def restart(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Stop, then start a model."""
    _admin_action("restart", name, url, as_json)


@app.command()
def logs(
    name: str,
    lines: Annotated[int, typer.Option("-n", "--lines")] = 100,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """The last lines an engine printed."""
    if as_json:
        print(json.dumps(_call("GET", url, f"/admin/models/{name}/logs?lines={lines}"), indent=2))
        return
    with httpx.Client(timeout=30) as client:
        resp = _send(client, "GET", url, f"/admin/models/{name}/logs?lines={lines}")
        sys.stdout.write(resp.text)


@app.command()
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


def _load_or_exit(path: Path) -> Any:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(f"[red]✗[/] {issue}", highlight=False)
        err.print("the config did not validate: nothing was started")
        raise typer.Exit(1) from None


def _send(client: httpx.Client, method: str, url: str, path: str) -> httpx.Response:
    try:
        resp = client.request(method, url.rstrip("/") + path)
    except httpx.HTTPError as exc:
        err.print(f"cannot reach the gateway at {url}: {exc} (is `modelyard serve` running?)")
        raise typer.Exit(2) from None
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text
        err.print(f"[red]error {resp.status_code}[/]: {message}", highlight=False)
        raise typer.Exit(1)
    return resp


def _call(method: str, url: str, path: str, timeout: float = 30) -> Any:
    with httpx.Client(timeout=timeout) as client:
        return _send(client, method, url, path).json()


def main() -> None:
    app()
