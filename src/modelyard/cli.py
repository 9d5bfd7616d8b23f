"""The ``modelyard`` command: serve, check a config, and drive a running gateway."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console
from rich.table import Table

from modelyard.config import ConfigError, load_config, split_listen
from modelyard.units import format_bytes, format_duration

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
    from modelyard.gateway import create_app
    from modelyard.gateway.connection import run_server

    cfg = _load_or_exit(config)
    if listen is not None:
        try:
            split_listen(listen)
        except ValueError as exc:
            err.print(f"--listen {exc}")
            raise typer.Exit(2) from None
        cfg = cfg.model_copy(update={"listen": listen})
    host, port = split_listen(cfg.listen)
    if not cfg.access.keys and not cfg.access.allow_open_lan and not _loopback(host):
        err.print(
            f"refusing to serve {host}:{port} with no API keys: anyone on the network could use "
            "it. Add keys under access.keys (modelyard key NAME), bind 127.0.0.1, or set "
            "access.allow_open_lan: true"
        )
        raise typer.Exit(2)
    err.print(f"modelyard: {len(cfg.models)} model(s) from {config}, listening on {host}:{port}")
    # On SIGTERM/SIGINT: stop taking requests, let those running finish (bounded by the
    # drain timeout), then stop the engines.
    run_server(
        create_app(cfg),
        host,
        port,
        cfg.access,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=int(cfg.scheduler.drain_timeout) or 1,
    )


@app.command()
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

    cfg = _load_or_exit(config)
    spec = cfg.nodes.get(node)
    if spec is None or spec.url is None:
        remote = [n for n, s in cfg.nodes.items() if s.url]
        err.print(f"{node!r} is not a node with an url in {config}; those are: {', '.join(remote)}")
        raise typer.Exit(2)
    parts = urlsplit(spec.url)
    host, port = split_listen(listen) if listen else (parts.hostname or "0.0.0.0", parts.port or 80)
    if not listen and not _is_ip(host):
        host = "0.0.0.0"  # a name in the url: listen on every address
    err.print(f"modelyard agent of node {node} on {host}:{port}")
    run_server(
        create_agent_app(cfg, node), host, port, cfg.access, log_level="info", access_log=False
    )


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("key")
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


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@app.command()
def nodes(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The nodes: mode, reachability and GPUs."""
    _show(url, "/admin/nodes", as_json, lambda data: _nodes_table(data["nodes"]))


def _nodes_table(rows: list[dict[str, Any]]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("NODE", "MODE", "KIND", "REACHABLE", "GPUS"):
        table.add_column(col, overflow="fold")
    for n in rows:
        gpus = (
            "; ".join(
                f"{g['index']}: {g['name']} {format_bytes(g['memory_used'])}/"
                f"{format_bytes(g['memory_total'])}"
                + (f" PCIe {g['pcie_gen']}.0 x{g['pcie_width']}" if g.get("pcie_width") else "")
                for g in n["gpus"]
            )
            or "none"
        )
        reach = "yes" if n["reachable"] else f"no ({n.get('error') or 'no answer'})"
        table.add_row(n["name"], n["mode"], n["kind"], reach, gpus)
    out.print(table)


@app.command()
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
        known = [n["name"] for n in _call("GET", url, "/admin/nodes")["nodes"]]
        if len(known) != 1:
            err.print(f"name the node: modelyard mode NODE {words[0]} (nodes: {', '.join(known)})")
            raise typer.Exit(2)
        words.insert(0, known[0])
    node, wanted = words
    if config is not None:
        cfg = _load_or_exit(config)
        spec = cfg.nodes.get(node)
        if spec is None or spec.url is None:
            err.print(f"{node!r} has no agent url in {config}")
            raise typer.Exit(2)
        headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else {}
        data = _call(
            "PUT", spec.url, "/agent/mode", json={"mode": wanted}, headers=headers, timeout=120
        )
    else:
        data = _call("PUT", url, f"/admin/nodes/{node}/mode", json={"mode": wanted}, timeout=600)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        out.print(f"{data['name']}: {data['mode']} ({data['kind']})", highlight=False)


route_app = typer.Typer(help="Routing decisions: explain one before it is sent.")
app.add_typer(route_app, name="route")


@route_app.command("explain")
def route_explain(
    model: Annotated[str, typer.Option("--model", "-m", help="The `model` asked for.")] = "auto",
    prompt: Annotated[str | None, typer.Option(help="The last user message.")] = None,
    header: Annotated[list[str] | None, typer.Option(help="A header, NAME: VALUE.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="A JSON request body.")] = None,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="Decide offline from this config.")
    ] = None,
    mode: Annotated[list[str] | None, typer.Option(help="With -c: NODE=MODE.")] = None,
    down: Annotated[list[str] | None, typer.Option(help="With -c: NODE is unreachable.")] = None,
    replay: Annotated[
        int | None, typer.Option(help="Instead: the last N logged requests through -c FILE.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Print the decision a request would get now, without sending it."""
    if replay is not None:
        if config is None:
            err.print("--replay needs -c FILE: the config to replay the logged requests through")
            raise typer.Exit(2)
        route_replay(config, replay, url, as_json)
        return
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt or ""}]}
    if file is not None:
        try:
            body = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            err.print(f"{file}: not a JSON request body ({exc})")
            raise typer.Exit(2) from None
    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep:
            err.print(f"--header {item!r}: expected NAME: VALUE")
            raise typer.Exit(2)
        headers[name.strip()] = value.strip()
    if config is None:
        data = _call(
            "POST", url, "/admin/route/explain", json={"request": body, "headers": headers}
        )
    else:
        data = _explain_offline(_load_or_exit(config), body, headers, mode or [], down or [])
    if as_json:
        print(json.dumps(data, indent=2))
        return
    out.print(f"asked for {data['asked']!r}, about {data['tokens']} tokens", highlight=False)
    for step in data["trail"]:
        mark = "[green]✓[/]" if step["ok"] else "[dim]·[/]"
        out.print(f"  {mark} {step['kind']} {step['name']}: {step['why']}", highlight=False)
    chosen = data["model"] or "nothing: every candidate was turned down"
    via = f" (rule {data['rule']})" if data["rule"] else ""
    out.print(
        f"→ {chosen}{via}; fallbacks: {', '.join(data['candidates'][1:]) or 'none'}",
        highlight=False,
    )


def _explain_offline(
    cfg: Any, body: dict[str, Any], headers: dict[str, str], modes: list[str], down: list[str]
) -> dict[str, Any]:
    """Every node healthy and in its default mode, unless --mode or --down say otherwise."""
    from modelyard.routing import Cluster, features, route

    chosen = {name: node.initial_mode for name, node in cfg.nodes.items()}
    for item in modes:
        node, sep, wanted = item.partition("=")
        if not sep or node not in cfg.nodes or wanted not in cfg.nodes[node].modes:
            err.print(f"--mode {item!r}: expected NODE=MODE with a node and mode of the config")
            raise typer.Exit(2)
        chosen[node] = wanted
    cluster = Cluster(
        modes={n: (m, cfg.nodes[n].modes[m].kind) for n, m in chosen.items()},
        reachable={n: n not in down for n in cfg.nodes},
    )
    return route(cfg, features(body, headers), cluster).as_dict()


@route_app.command("replay")
def route_replay(
    config: Annotated[Path, typer.Option("-c", "--config", help="The new config to try.")],
    last: Annotated[int, typer.Option("--last", "-n", help="How many logged requests.")] = 50,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Run the last N logged requests through another config; print what would change."""
    from modelyard.routing import Cluster, Features, route

    cfg = _load_or_exit(config)
    logged = _call("GET", url, f"/admin/decisions?limit={last}")["decisions"]
    live = {n["name"]: n for n in _call("GET", url, "/admin/nodes")["nodes"]}
    modes = {}
    for name, spec in cfg.nodes.items():
        mode = live.get(name, {}).get("mode")
        mode = mode if mode in spec.modes else spec.initial_mode
        modes[name] = (mode, spec.modes[mode].kind)
    reachable = {n: bool(live.get(n, {}).get("reachable", True)) for n in cfg.nodes}
    cluster = Cluster(modes=modes, reachable=reachable)
    changes = []
    textless = sum(1 for old in logged if old.get("features", {}).get("text_kept") is False)
    for old in logged:
        if "features" not in old:
            continue
        new = route(cfg, Features.from_dict(old["features"]), cluster)
        if (new.model, new.rule) != (old["model"], old["rule"]):
            changes.append(
                {
                    "id": old["id"],
                    "asked": old["asked"],
                    "was": {"model": old["model"], "rule": old["rule"]},
                    "now": {"model": new.model, "rule": new.rule},
                }
            )
    reads_text = any(r.last_message or r.tag for r in cfg.policy)
    note = (
        f"{textless} of them were logged without their text (telemetry.keep_prompts: false): "
        "their `last_message` and `tag` conditions were judged on an empty message"
        if textless and reads_text
        else None
    )
    if as_json:
        print(json.dumps({"replayed": len(logged), "changed": changes, "note": note}, indent=2))
        return
    out.print(
        f"replayed {len(logged)} request(s) through {config}: {len(changes)} would change",
        highlight=False,
    )
    if note:
        out.print(f"  note: {note}", highlight=False)
    for c in changes:
        out.print(
            f"  {c['id']} asked {c['asked']!r}: {c['was']['model']} ({c['was']['rule']}) → "
            f"{c['now']['model']} ({c['now']['rule']})",
            highlight=False,
        )


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
    """Things that validate but will not run here (absent weights files), or need a look."""
    notes = list(cfg.warnings)
    for name, model in cfg.models.items():
        weights = getattr(model, "weights", None)
        if weights is not None and not Path(weights).is_file():
            notes.append(f"{name}: weights file not found here: {weights}")
    return notes


@app.command()
def status(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The gateway, its models and its latest events."""
    _show(url, "/admin/status", as_json, _status_text)


def _status_text(data: dict[str, Any]) -> None:
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
    _show(url, "/admin/models", as_json, lambda data: _models_table(data["models"]))


@app.command()
def top(
    url: UrlOpt = DEFAULT_URL,
    interval: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
    rows: Annotated[int, typer.Option(help="Recent requests shown.")] = 15,
    once: Annotated[bool, typer.Option("--once", help="Print one view and exit.")] = False,
) -> None:
    """A live view of nodes, GPUs, instances, queues and the latest requests."""
    import time

    from rich.live import Live

    from modelyard.top import frame

    def fetch(client: httpx.Client) -> Any:
        status = _send(client, "GET", url, "/admin/status").json()
        recent = _send(client, "GET", url, f"/admin/requests?limit={rows}").json()["requests"]
        return frame(status, recent)

    with httpx.Client(timeout=10) as client:
        if once:
            out.print(fetch(client))
            return
        with Live(fetch(client), console=out, auto_refresh=False, screen=True) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(fetch(client), refresh=True)
            except KeyboardInterrupt:
                pass


def _show(
    url: str, path: str, as_json: bool, render: Callable[[Any], None], method: str = "GET"
) -> None:
    """Call ``path`` and print the answer: as JSON for scripts, else as ``render`` lays it out."""
    data = _call(method, url, path, timeout=30 if method == "GET" else 600)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(data)


def _models_table(models: list[dict[str, Any]]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in (
        "MODEL",
        "NODE",
        "ENGINE",
        "STATE",
        "INSTANCE",
        "PID",
        "IN FLIGHT",
        "GROUP",
        "NOTE",
    ):
        table.add_column(col, overflow="fold")
    for m in models:
        state = m["state"]
        if m.get("progress") is not None:
            state += f" {int(m['progress'] * 100)}%"
        note = m.get("error") or (m.get("reason") if m["state"] != "ready" else "") or ""
        table.add_row(
            m["name"],
            m["node"],
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
    path = f"/admin/models/{name}/{action}"
    _show(
        url,
        path,
        as_json,
        lambda d: out.print(f"{d['name']}: {d['state']}", highlight=False),
        method="POST",
    )


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
def reload(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Make the gateway read its config file again; applied only if it validates."""
    _show(
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


def _send(client: httpx.Client, method: str, url: str, path: str, **kw: Any) -> httpx.Response:
    key = os.environ.get("MODELYARD_API_KEY")
    if key and "headers" not in kw:
        kw["headers"] = {"Authorization": f"Bearer {key}"}
    try:
        resp = client.request(method, url.rstrip("/") + path, **kw)
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


def _call(method: str, url: str, path: str, timeout: float = 30, **kw: Any) -> Any:
    with httpx.Client(timeout=timeout) as client:
        return _send(client, method, url, path, **kw).json()


def main() -> None:
    app()
