"""Commands that run a server on this machine (the gateway, a node's agent) and make API keys."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer

from modelyard.cli.config_files import load_or_exit
from modelyard.cli.journal import log_to_stderr, uvicorn_logging
from modelyard.cli.options import DEFAULT_CONFIG, ConfigOpt
from modelyard.cli.output import err, out
from modelyard.config import split_listen


def serve(
    config: ConfigOpt = DEFAULT_CONFIG,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT, overrides `listen:`.")] = None,
) -> None:
    """Run the gateway on the config's port."""
    _ignore_early_reloads()
    # Imported here: the gateway and uvicorn are heavy, and `modelyard --help` should be quick.
    from modelyard.gateway import create_app
    from modelyard.gateway.connection import run_server

    cfg = load_or_exit(config)
    if listen is not None:
        try:
            split_listen(listen)
        except ValueError as exc:
            err.print(f"--listen {exc}")
            raise typer.Exit(2) from None
        cfg = cfg.model_copy(update={"listen": listen})
    host, port = split_listen(cfg.listen)
    if problem := cfg.open_without_keys():
        err.print(f"refusing to serve {problem}")
        raise typer.Exit(2)
    err.print(f"modelyard: {len(cfg.models)} model(s) from {config}, listening on {host}:{port}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a wildcard: this machine
    shown = f"[{shown}]" if ":" in shown else shown
    err.print(f"console: http://{shown}:{port}/  API: http://{shown}:{port}/v1", highlight=False)
    log_to_stderr()
    # On SIGTERM/SIGINT: stop taking requests, let those running finish (bounded by the
    # drain timeout), then stop the engines.
    run_server(
        _built(lambda: create_app(cfg)),
        host,
        port,
        cfg.access,
        log_level="info",
        access_log=False,
        **uvicorn_logging(),
        timeout_graceful_shutdown=int(cfg.scheduler.drain_timeout) or 1,
    )


def _built(make: Callable[[], Any]) -> Any:
    """The app ``make`` builds; a state file of a newer release stops it, saying so."""
    from modelyard.migrations import NewerSchema

    try:
        return make()
    except NewerSchema as exc:
        err.print(f"{exc}; nothing was started")
        raise typer.Exit(1) from None


def agent(
    node: Annotated[str, typer.Option("--node", help="Which node of the config this machine is.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT; default: from the node's url.")
    ] = None,
) -> None:
    """Run the agent of NODE: its GPUs, its mode and its engines, for a gateway elsewhere."""
    from modelyard.agent import create_agent_app
    from modelyard.gateway.connection import run_server

    cfg = load_or_exit(config)
    if node not in cfg.agent_nodes:
        remote = ", ".join(cfg.agent_nodes)
        err.print(f"{node!r} is not a node with an url in {config}; those are: {remote}")
        raise typer.Exit(2)
    spec = cfg.nodes[node]
    host, port = split_listen(listen) if listen else spec.agent_listen()
    err.print(f"modelyard agent of node {node} on {host}:{port}")
    log_to_stderr()  # its own lines (auto mode, parts) beside uvicorn's: the journal's too
    run_server(
        _built(lambda: create_agent_app(cfg, node)),
        host,
        port,
        cfg.access,
        log_level="info",
        access_log=False,
        **uvicorn_logging(),
        # The gateway follows engine logs through open streams: they must not hold a stop.
        timeout_graceful_shutdown=5,
    )


def new_key(
    name: Annotated[str, typer.Argument(help="A name for whoever gets the key.")],
    admin: Annotated[bool, typer.Option(help="Also the admin scope.")] = False,
) -> None:
    """Make a new API key: the key for its holder, and the lines for access.keys."""
    import hashlib
    import secrets

    key = "my-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    scopes = "[user, admin]" if admin else "[user]"
    out.print(f"key (give it to {name}; it is not kept anywhere): {key}", highlight=False)
    out.print("add to the config under access.keys:", highlight=False)
    out.print(f"  - {{name: {name}, sha256: {digest}, scopes: {scopes}}}", markup=False)


def _ignore_early_reloads() -> None:
    """A reload (SIGHUP, `systemctl reload`) before the gateway listens must not end it, as
    SIGHUP's default would: the config is read after this, so it reads the file as the
    reload meant; the gateway installs its own handler once it is up. A handler, not
    SIG_IGN: an ignored signal stays ignored in the engines the gateway starts."""
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, lambda _signum, _frame: None)
