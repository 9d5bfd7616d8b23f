"""``modelyard route``: the decision a request would get, from the gateway or offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard.cli.client import call
from modelyard.cli.config_files import load_or_exit
from modelyard.cli.options import DEFAULT_URL, JsonOpt, UrlOpt
from modelyard.cli.output import err, out
from modelyard.config import Config


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
        data = call("POST", url, "/admin/route/explain", json={"request": body, "headers": headers})
    else:
        data = _explain_offline(load_or_exit(config), body, headers, mode or [], down or [])
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
    cfg: Config, body: dict[str, Any], headers: dict[str, str], modes: list[str], down: list[str]
) -> dict[str, Any]:
    """Every node healthy and in its default mode, unless --mode or --down say otherwise."""
    from modelyard.openai_body import features
    from modelyard.routing import Cluster, route

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


def route_replay(
    config: Annotated[Path, typer.Option("-c", "--config", help="The new config to try.")],
    last: Annotated[int, typer.Option("--last", "-n", help="How many logged requests.")] = 50,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Run the last N logged requests through another config; print what would change."""
    from modelyard.routing import Cluster, Features, route

    cfg = load_or_exit(config)
    logged = call("GET", url, f"/admin/decisions?limit={last}")["decisions"]
    live = {n["name"]: n for n in call("GET", url, "/admin/nodes")["nodes"]}
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
