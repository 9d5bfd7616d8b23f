"""Talking to a running gateway's API: one request, its errors turned into exits."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import httpx
import typer

from modelyard.cli.output import err


def send(client: httpx.Client, method: str, url: str, path: str, **kw: Any) -> httpx.Response:
    """One request to the gateway at ``url``, with ``MODELYARD_API_KEY`` as bearer if set.

    Exits 2 when the gateway cannot be reached and 1 when it answers an error, after
    printing why: every command stops the same way.
    """
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


def call(method: str, url: str, path: str, timeout: float = 30, **kw: Any) -> Any:
    """:func:`send` on a client of its own; the answer's JSON."""
    with httpx.Client(timeout=timeout) as client:
        return send(client, method, url, path, **kw).json()


def show(
    url: str, path: str, as_json: bool, render: Callable[[Any], None], method: str = "GET"
) -> None:
    """Call ``path`` and print the answer: as JSON for scripts, else as ``render`` lays it out."""
    data = call(method, url, path, timeout=30 if method == "GET" else 600)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(data)
