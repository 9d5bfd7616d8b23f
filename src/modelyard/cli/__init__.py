"""The ``modelyard`` command: serve, check a config, and drive a running gateway.

The command modules hold plain functions and know nothing of the typer app; this module
builds the app and registers every command in one list. That keeps the imports one way
(this package imports its modules, never the reverse), and fixes the order ``--help``
lists the commands in, which follows the user's path rather than the module layout.
"""

from __future__ import annotations

import typer

from modelyard import __version__
from modelyard.cli import admin, config_files, doctor, route, server, service, state

app = typer.Typer(
    help="One OpenAI-compatible endpoint that starts, swaps and stops model servers.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass  # the app's own options; each command has its own


app.command()(server.serve)
app.command()(server.agent)
app.command("key")(server.new_key)
app.command()(admin.nodes)
app.command()(admin.mode)

route_app = typer.Typer(help="Routing decisions: explain one before it is sent.")
app.add_typer(route_app, name="route")
route_app.command("explain")(route.route_explain)
route_app.command("replay")(route.route_replay)

app.command()(config_files.check)
app.command()(doctor.doctor)
app.command()(admin.status)
app.command()(admin.ps)
app.command()(admin.top)
app.command()(admin.start)
app.command()(admin.stop)
app.command()(admin.restart)
app.command()(admin.reload)
app.command()(admin.logs)
app.command()(config_files.init)
app.command()(state.backup)
app.command()(state.restore)

service_app = typer.Typer(help="A systemd unit for the gateway or a node's agent.")
app.add_typer(service_app, name="service")
service_app.command("install")(service.install)
service_app.command("uninstall")(service.uninstall)


def main() -> None:
    """Run the command line (the ``modelyard`` console script and ``python -m modelyard``)."""
    app()


__all__ = ["app", "main"]
