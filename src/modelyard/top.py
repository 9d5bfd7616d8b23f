"""``modelyard top``: a live terminal view of nodes, GPUs, instances, queues and requests.

``frame`` lays out one view from what the gateway's admin API returns (``/admin/status``
and ``/admin/requests``). ``Follower`` reads the gateway's event stream
(``/admin/events``): each finished request joins the list as it ends, and any change
redraws at once; the status is read again on each change and every interval (GPU figures
are sampled, not events).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from modelyard.units import format_bytes, format_duration

_STATE_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "draining": "yellow",
    "stopping": "yellow",
    "failed": "red",
    "stopped": "dim",
}


def frame(status: dict[str, Any], requests: list[dict[str, Any]]) -> RenderableType:
    """One view of the gateway: a header, nodes and GPUs, instances, recent requests."""
    head = Text(
        f"modelyard {status.get('version', '')} on {status.get('listen', '')} · up "
        f"{format_duration(status.get('uptime_s', 0))} · {time.strftime('%H:%M:%S')}",
        style="bold",
    )
    parts: list[RenderableType] = [head, _nodes(status["nodes"]), _instances(status["models"])]
    if status.get("gpu_leases"):  # only while a serial GPU is in use or waited for
        parts.append(_leases(status["gpu_leases"]))
    speeds = status.get("speeds") or {}
    if speeds.get("nodes"):  # once answers were counted
        parts.append(_speeds(speeds))
    return Group(*parts, _recent(requests))


def _speeds(speeds: dict[str, list[dict[str, Any]]]) -> Table:
    """Mean time to first token and tokens/s so far, per node, then per GPU."""
    table = Table(title="speed", title_justify="left", box=None, pad_edge=False)
    for col in ("NODE", "GPU", "ANSWERS", "TTFT", "TOK/S"):
        table.add_column(col)
    rows = [(s, "all") for s in speeds.get("nodes", [])]
    rows += [(s, str(s["gpu"])) for s in speeds.get("gpus", [])]
    for speed, gpu in sorted(rows, key=lambda r: (r[0]["node"], r[1] != "all", r[1])):
        ttft, rate = speed.get("ttft_s"), speed.get("tokens_per_s")
        table.add_row(
            speed["node"],
            gpu,
            str(speed.get("answers", 0)),
            "" if ttft is None else f"{ttft * 1000:.0f} ms",
            "" if rate is None else f"{rate:.1f}",
        )
    return table


def _leases(leases: list[dict[str, Any]]) -> Table:
    table = Table(title="GPU leases", title_justify="left", box=None, pad_edge=False)
    for col in ("LEASE", "HELD BY", "REQUESTS", "FOR", "WAITING", "LONGEST WAIT"):
        table.add_column(col)
    for lease in leases:
        held, waited = lease.get("held_s"), lease.get("longest_wait_s")
        table.add_row(
            lease["lease"],
            lease.get("holder") or "",
            str(lease.get("holding", 0)),
            "" if held is None else format_duration(held),
            ", ".join(lease.get("waiting", [])),
            "" if waited is None else format_duration(waited),
        )
    return table


def _nodes(nodes: list[dict[str, Any]]) -> Table:
    table = Table(title="nodes", title_justify="left", box=None, pad_edge=False)
    for col in ("NODE", "UP", "MODE", "GPU", "MEMORY", "UTIL", "TEMP", "POWER"):
        table.add_column(col)
    for node in nodes:
        up = Text("yes", "green") if node.get("reachable") else Text("no", "red")
        gpus = node.get("gpus") or [None]
        for i, gpu in enumerate(gpus):
            first = [node["name"], up, node.get("mode", "")] if i == 0 else ["", "", ""]
            table.add_row(*first, *_gpu_cells(gpu))
    return table


def _gpu_cells(gpu: dict[str, Any] | None) -> list[str]:
    if gpu is None:
        return ["(no GPU)", "", "", "", ""]
    total = gpu.get("memory_total") or 0
    used = gpu.get("memory_used") or 0
    memory = (
        f"{format_bytes(used)} / {format_bytes(total)}"
        if gpu.get("measured")
        else f"{format_bytes(total)} (declared)"
    )

    def opt(key: str, unit: str) -> str:
        value = gpu.get(key)
        return "" if value is None else f"{value:.0f}{unit}"

    return [
        f"{gpu['index']}: {gpu['name']}",
        memory,
        opt("utilization", "%"),
        opt("temperature", "°C"),
        opt("power", " W"),
    ]


def _instances(models: list[dict[str, Any]]) -> Table:
    table = Table(title="instances", title_justify="left", box=None, pad_edge=False)
    for col in ("MODEL", "NODE", "STATE", "SLOTS", "QUEUE", "PID", "RESTARTS", "NOTE"):
        table.add_column(col)
    for m in models:
        state = m.get("state", "stopped")
        slots, used = m.get("slots"), m.get("in_flight", 0)
        note = m.get("error") or m.get("reason") or ""
        table.add_row(
            m["name"],
            m.get("node", ""),
            Text(state, _STATE_STYLE.get(state, "")),
            f"{used}/{slots}" if slots else str(used),
            str(m.get("waiting", 0)),
            str(m.get("pid") or ""),
            str(m.get("restarts", 0)),
            note[:60],
        )
    return table


def _recent(requests: list[dict[str, Any]]) -> Table:
    table = Table(title="recent requests", title_justify="left", box=None, pad_edge=False)
    for col in ("TIME", "KEY", "ASKED", "SERVED", "STATUS", "IN", "OUT", "TTFT", "TOTAL"):
        table.add_column(col)
    for r in requests:
        ok = r["status"] < 400
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(r["at"])),
            r.get("key") or "",
            r["asked"],
            r.get("model") or "",
            Text(f"{r['status']} {r['outcome']}", "green" if ok else "red"),
            "" if r.get("tokens_in") is None else str(r["tokens_in"]),
            "" if r.get("tokens_out") is None else str(r["tokens_out"]),
            "" if r.get("ttft_s") is None else f"{r['ttft_s'] * 1000:.0f} ms",
            f"{r['duration_s'] * 1000:.0f} ms",
        )
    return table


class Follower(threading.Thread):
    """Follows ``/admin/events`` in the background: finished requests go to the front of
    ``recent``, and ``changed`` is set on every event. Reconnects after a second if the
    stream breaks; a gateway without the stream is read by polling alone."""

    def __init__(self, url: str, headers: dict[str, str], recent: deque[dict[str, Any]]) -> None:
        super().__init__(daemon=True, name="modelyard-top-events")
        self.url, self.headers, self.recent = url.rstrip("/"), headers, recent
        self.changed = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self._follow()
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1.0)

    def _follow(self) -> None:
        path = "/admin/events?kinds=instance,node,config,request"
        with httpx.stream("GET", self.url + path, headers=self.headers, timeout=None) as resp:
            if resp.status_code != 200:
                time.sleep(30)  # an older gateway: polling will do
                return
            kind = ""
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    if kind == "request":
                        self.recent.appendleft(json.loads(line.removeprefix("data: ")))
                    self.changed.set()
