"""Doctor's checks of this host: the state dir can be written, the ports this run listens on
are free (or hold modelyard already), and a LAN bind has API keys (the gateway) or a token
(an agent).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import tempfile
from pathlib import Path

import httpx

from modelyard.config import Config, is_loopback, split_listen
from modelyard.doctor.result import Context, Result

HEALTH_TIMEOUT = 2.0  # seconds whatever holds a port has to answer /health


def state_dir_of(ctx: Context, cfg: Config) -> Path:
    """Where the gateway, or ``--node``'s agent, keeps its state (as each computes it)."""
    if ctx.agent and ctx.node is not None:
        return cfg.nodes[ctx.node].state_dir or cfg.state_dir / f"agent-{ctx.node}"
    return cfg.state_dir


def _write_error(folder: Path) -> str | None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".modelyard-doctor-") as f:
            f.write(b"x")
            f.flush()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_state_dir(ctx: Context) -> list[Result]:
    """The state dir is a writable folder, or can be made (it is not created here)."""
    cfg = ctx.config
    assert cfg is not None
    path = state_dir_of(ctx, cfg)
    fix = "point state_dir (or nodes.NODE.state_dir) at a folder this user may write"
    if path.exists():
        if not path.is_dir():
            return [Result("state dir", "fail", f"{path} exists and is not a folder", fix)]
        why = _write_error(path)
        if why:
            return [Result("state dir", "fail", f"{path} is not writable: {why}", fix)]
        return [Result("state dir", "ok", f"{path} is writable")]
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [
            Result(
                "state dir", "fail", f"{path} cannot be made: {parent} is a file, not a folder", fix
            )
        ]
    why = _write_error(parent)
    if why:
        return [
            Result(
                "state dir", "fail", f"{path} cannot be made: {parent} is not writable ({why})", fix
            )
        ]
    return [
        Result(
            "state dir",
            "info",
            f"{path} does not exist yet: the first start makes it ({parent} is writable)",
        )
    ]


def _bind_error(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind((host, port))
    except OSError as exc:
        return exc
    return None


async def _who(host: str, port: int) -> tuple[str, str] | None:
    """What answers ``/health`` on ``host:port``: ("gateway" or "agent:NODE", in words), or
    None (nothing answers it as modelyard does)."""
    near = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    near = f"[{near}]" if ":" in near else near
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=HEALTH_TIMEOUT) as client:
            body = (await client.get(f"http://{near}:{port}/health")).json()
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("status") != "ok":
        return None
    version = f" {body['version']}" if body.get("version") else ""
    if "node" in body:  # the agent's /health names its node; the gateway's does not
        return f"agent:{body['node']}", f"the modelyard{version} agent of node {body['node']}"
    return "gateway", f"a modelyard{version} gateway"


async def _port(label: str, host: str, port: int, expect: str, probe: int) -> Result:
    """Whether ``host:port`` can be bound; if taken, whether by what ``expect`` names
    (``gateway`` or ``agent:NODE``), asked on port ``probe`` (another port for a listener
    that speaks no HTTP: the gateway's own)."""
    name = f"port {label}"
    exc = _bind_error(host, port)
    if exc is None:
        return Result(name, "ok", f"{host}:{port} is free")
    if exc.errno == errno.EADDRNOTAVAIL:
        return Result(
            name,
            "fail",
            f"{host} is not an address of this machine",
            "listen on one of its addresses, 0.0.0.0 (all) or 127.0.0.1",
        )
    if exc.errno == errno.EACCES:
        return Result(
            name,
            "fail",
            f"{host}:{port}: ports below 1024 need root",
            "a port above 1023, or CAP_NET_BIND_SERVICE",
        )
    if exc.errno != errno.EADDRINUSE:
        return Result(name, "fail", f"cannot bind {host}:{port}: {exc}")
    who = await _who(host, probe)
    if who is not None and who[0] == expect:
        return Result(
            name,
            "info",
            f"{host}:{port}: {who[1]} already runs there",
            "stop it first to start it again (modelyard status shows it)",
        )
    holder = who[1] if who is not None and probe == port else "another program"
    return Result(
        name,
        "fail",
        f"{host}:{port} is in use by {holder}",
        f"stop it (`ss -ltnp 'sport = :{port}'` shows which process), or choose another port",
    )


async def check_ports(ctx: Context) -> list[Result]:
    """The ports this run listens on can be bound now; a modelyard already there is said."""
    cfg = ctx.config
    assert cfg is not None
    if ctx.agent and ctx.node is not None:
        host, port = cfg.nodes[ctx.node].agent_listen()
        return [await _port("agent", host, port, f"agent:{ctx.node}", port)]
    host, port = split_listen(cfg.listen)
    wanted = [_port("gateway", host, port, "gateway", port)]
    if cfg.wyoming is not None:  # not HTTP: the gateway's own port says whose it is
        w_host, w_port = split_listen(cfg.wyoming.listen)
        wanted.append(_port("wyoming", w_host, w_port, "gateway", port))
    return list(await asyncio.gather(*wanted))


def check_access(ctx: Context) -> list[Result]:
    """A non-loopback address needs API keys (the gateway) or a token (an agent)."""
    cfg = ctx.config
    assert cfg is not None
    if ctx.agent and ctx.node is not None:
        spec = cfg.nodes[ctx.node]
        assert spec.url is not None
        host, port = spec.agent_listen()
        if is_loopback(host):
            return [Result("access", "ok", f"the agent listens on {host}: this machine only")]
        if spec.token:
            return [Result("access", "ok", f"the agent on {host}:{port} requires its token")]
        return [
            Result(
                "access",
                "fail",
                f"the agent listens on {host}:{port} with no token: whoever reaches it can "
                "start and stop this node's models and read their logs",
                f"set nodes.{ctx.node}.token (e.g. ${{AGENT_TOKEN}}) in the config both "
                "machines use",
            )
        ]
    host, port = split_listen(cfg.listen)
    keys = cfg.access.keys
    admins = sum("admin" in k.scopes for k in keys)
    found: list[Result] = []
    if is_loopback(host):
        found.append(Result("access", "ok", f"listens on {host}: this machine only"))
    elif keys:
        found.append(
            Result(
                "access",
                "ok",
                f"{host}:{port} is open to the network; "
                f"{len(keys)} API key(s) required, {admins} with admin",
            )
        )
    else:
        open_lan = cfg.access.allow_open_lan
        found.append(
            Result(
                "access",
                "warn" if open_lan else "fail",
                f"{host}:{port} with no API keys: anyone on the network can use and administer "
                "it (start, stop, read logs and conversations)"
                + (" (access.allow_open_lan: true)" if open_lan else "; serve refuses to start"),
                "add a key (modelyard key NAME --admin, its line under access.keys), or listen "
                "on 127.0.0.1" + ("" if open_lan else ", or set access.allow_open_lan: true"),
            )
        )
    for n, spec in cfg.nodes.items():
        if spec.url and not spec.token and not is_loopback(spec.agent_listen()[0]):
            found.append(
                Result(
                    "access",
                    "warn",
                    f"node {n}'s agent ({spec.url}) has no token: whoever reaches it can start "
                    "and stop its models",
                    f"set nodes.{n}.token in the config both machines use",
                )
            )
    return found
