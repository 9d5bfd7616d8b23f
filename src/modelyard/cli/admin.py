"""Commands that drive a running gateway through its admin API: models, nodes and modes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from modelyard.cli.client import call, send, show
from modelyard.cli.config_files import load_or_exit
from modelyard.cli.options import DEFAULT_URL, JsonOpt, UrlOpt
from modelyard.cli.output import err, out
from modelyard.cli.views import models_table, nodes_table, status_text


def nodes(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The nodes: mode, reachability and GPUs."""
    show(url, "/admin/nodes", as_json, lambda data: nodes_table(data["nodes"]))


def mode(
    args: Annotated[
        list[str] | None, typer.Argument(help="[NODE] MODE; none: show every node.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="Talk to NODE's agent directly, as this config says."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a node's mode (persisted on the node), through the gateway or straight to its agent."""
    words = args or []
    if len(words) > 2:
        err.print("usage: modelyard mode [NODE] MODE")
        raise typer.Exit(2)
    if not words:
        nodes(url, as_json)
        return
    if len(words) == 1:
        known = [n["name"] for n in call("GET", url, "/admin/nodes")["nodes"]]
        if len(known) != 1:
            err.print(f"name the node: modelyard mode NODE {words[0]} (nodes: {', '.join(known)})")
            raise typer.Exit(2)
        words.insert(0, known[0])
    node, wanted = words
    if config is not None:
        cfg = load_or_exit(config)
        spec = cfg.nodes.get(node)
        if spec is None or spec.url is None:
            err.print(f"{node!r} has no agent url in {config}")
            raise typer.Exit(2)
        headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else {}
        data = call(
            "PUT", spec.url, "/agent/mode", json={"mode": wanted}, headers=headers, timeout=120
        )
    else:
        data = call("PUT", url, f"/admin/nodes/{node}/mode", json={"mode": wanted}, timeout=600)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        out.print(f"{data['name']}: {data['mode']} ({data['kind']})", highlight=False)


def status(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The gateway, its models and its latest events."""
    show(url, "/admin/status", as_json, status_text)


def ps(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The models and the state of their instances."""
    show(url, "/admin/models", as_json, lambda data: models_table(data["models"]))


def top(
    url: UrlOpt = DEFAULT_URL,
    interval: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
    rows: Annotated[int, typer.Option(help="Recent requests shown.")] = 15,
    once: Annotated[bool, typer.Option("--once", help="Print one view and exit.")] = False,
) -> None:
    """A live view of nodes, GPUs, instances, queues and the latest requests."""
    from collections import deque

    from rich.live import Live

    from modelyard.top import Follower, frame

    with httpx.Client(timeout=10) as client:
        listed = send(client, "GET", url, f"/admin/requests?limit={rows}").json()["requests"]
        recent: deque[dict[str, Any]] = deque(listed, maxlen=rows)

        def fetch() -> Any:
            return frame(send(client, "GET", url, "/admin/status").json(), list(recent))

        if once:
            out.print(fetch())
            return
        key = os.environ.get("MODELYARD_API_KEY")
        follower = Follower(url, {"Authorization": f"Bearer {key}"} if key else {}, recent)
        follower.start()
        with Live(fetch(), console=out, auto_refresh=False, screen=True) as live:
            try:
                while True:  # redraw on each event, and every interval for the GPUs
                    follower.changed.wait(interval)
                    follower.changed.clear()
                    live.update(fetch(), refresh=True)
            except KeyboardInterrupt:
                pass


def start(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Start a model (stopping its swap group's other members) and wait until ready."""
    _model_action("start", name, url, as_json)


def stop(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Stop a model once its requests in flight finish."""
    _model_action("stop", name, url, as_json)


def restart(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Stop, then start a model."""
    _model_action("restart", name, url, as_json)


def _model_action(action: str, name: str, url: str, as_json: bool) -> None:
    path = f"/admin/models/{name}/{action}"
    show(
        url,
        path,
        as_json,
        lambda d: out.print(f"{d['name']}: {d['state']}", highlight=False),
        method="POST",
    )


def reload(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Make the gateway read its config file again; applied only if it validates."""
    show(
        url,
        "/admin/reload",
        as_json,
        lambda data: out.print(
            f"reloaded {data['reloaded']}: added {data['added'] or 'none'}, changed "
            f"{data['changed'] or 'none'}, removed {data['removed'] or 'none'}",
            highlight=False,
        ),
        method="POST",
    )


def logs(
    name: str,
    lines: Annotated[int, typer.Option("-n", "--lines")] = 100,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Then each new line, until Ctrl-C.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """The last lines an engine printed (with -f, then every new one, across restarts)."""
    if follow:
        _follow_logs(name, lines, url)
        return
    if as_json:
        print(json.dumps(call("GET", url, f"/admin/models/{name}/logs?lines={lines}"), indent=2))
        return
    with httpx.Client(timeout=30) as client:
        resp = send(client, "GET", url, f"/admin/models/{name}/logs?lines={lines}")
        sys.stdout.write(resp.text)


def _follow_logs(name: str, lines: int, url: str) -> None:
    """Prints the Server-Sent Events of ``/admin/models/NAME/logs?follow=1`` as lines."""
    path = f"/admin/models/{name}/logs?follow=1&lines={lines}"
    timeout = httpx.Timeout(30, read=None)  # a quiet engine: its keep-alive comes every 15 s
    try:
        with httpx.Client(timeout=timeout) as client:
            key = os.environ.get("MODELYARD_API_KEY")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            with client.stream("GET", url.rstrip("/") + path, headers=headers) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    send(client, "GET", url, path.replace("follow=1&", ""))  # says why, exits
                event = None
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") or line == "data:":
                        text = line[6:]
                        if event == "lost":
                            err.print(f"[yellow]({text} lines lost: this reader fell behind)[/]")
                        else:
                            sys.stdout.write(text + "\n")
                            sys.stdout.flush()
                    elif not line:
                        event = None
    except KeyboardInterrupt:
        return
    except httpx.HTTPError as exc:
        err.print(f"the log stream ended: {exc}")
        raise typer.Exit(2) from None
