"""How the gateway's answers look in a terminal: the tables and texts several commands print."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from modelyard.cli.output import out
from modelyard.units import format_bytes, format_duration


def nodes_table(rows: list[dict[str, Any]]) -> None:
    """Print the nodes of ``/admin/nodes``: mode, reachability and GPUs."""
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


def status_text(data: dict[str, Any]) -> None:
    """Print ``/admin/status``: the gateway, its models and its latest events."""
    out.print(
        f"modelyard {data['version']} on {data['listen']}, up {format_duration(data['uptime_s'])}, "
        f"config {data['config']}",
        highlight=False,
    )
    models_table(data["models"])
    if data["events"]:
        out.print("\nlatest events:")
        for ev in data["events"][:10]:
            secs = f" ({ev['seconds']:.1f}s)" if ev["seconds"] else ""
            out.print(f"  {ev['model']}: {ev['event']}{secs} {ev['detail'][:100]}", highlight=False)


def models_table(models: list[dict[str, Any]]) -> None:
    """Print the models and the state of their instances, one row per model."""
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
