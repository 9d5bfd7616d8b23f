"""systemd units for the gateway and for a node's agent: what goes in, and the unit's text.

Pure: no file is read or written here (``modelyard.cli.service`` does that). A unit runs the
same install that wrote it (its ``modelyard`` executable, its absolute config path) under
hardening that still lets engines use the GPUs and read weights in a home folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from modelyard.config import Config, split_listen

# The first line of every unit written: uninstall removes only a file that starts with it.
MARKER = "# Written by `modelyard service install`; `modelyard service uninstall` removes it."
SYSTEM_ENV_FILE = Path("/etc/modelyard/modelyard.env")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_MARGIN_S = 30  # beyond drain_timeout + stop_grace: closing stores, unloading ollama
_VAR_LIB = Path("/var/lib")
_UNIT_CHARS = re.compile(r"[A-Za-z0-9:_.-]")


@dataclass(frozen=True)
class UnitSpec:
    """Everything a unit says; ``render_unit`` turns it into the file's text."""

    executable: Path  # the absolute `modelyard` of the install that runs
    config: Path  # absolute
    state_dir: Path  # absolute: the gateway's, or the agent's own
    env_file: Path  # KEY=VALUE secrets; optional
    node: str | None = None  # an agent's node; None: the gateway
    user_unit: bool = False  # for the user's own service manager (systemctl --user)
    run_as: str | None = None  # system units: User=; None: root
    caches: tuple[Path, ...] = ()  # what engines write in the account's home
    writable: tuple[Path, ...] = ()  # folders the config names for engines
    stop_timeout_s: int = 70
    low_port: bool = False  # listens below 1024
    path: str = SYSTEM_PATH  # PATH: the install's bin folder first

    @property
    def name(self) -> str:
        """The unit's file name."""
        return unit_name(self.node)


def unit_name(node: str | None) -> str:
    """``modelyard.service``, or ``modelyard-agent-NODE.service`` for a node's agent.

    A plain unit per node rather than a template instance (``modelyard-agent@NODE``): each
    carries its own node's settings (state dir, stop timeout) and is removed alone. Node
    names are YAML keys: characters a unit name may not hold are escaped as ``\\xNN``.
    """
    if node is None:
        return "modelyard.service"
    escaped = "".join(
        c if _UNIT_CHARS.fullmatch(c) else "".join(f"\\x{b:02x}" for b in c.encode()) for c in node
    )
    return f"modelyard-agent-{escaped}.service"


def is_ours(text: str) -> bool:
    """Whether a unit file's text was written by ``modelyard service install``."""
    return text.split("\n", 1)[0] == MARKER


def parse_env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile's KEY=VALUE lines (as much of systemd's reading as matters to
    ``${VAR}`` in a config: comments, quotes)."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith(("#", ";")):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[key.strip()] = value
    return found


def unit_spec(
    config: Config,
    node: str | None,
    *,
    executable: Path,
    env_file: Path,
    user_unit: bool = False,
    run_as: str | None = None,
    home: Path | None = None,
    path: str = SYSTEM_PATH,
    config_path: Path | None = None,
) -> UnitSpec:
    """The unit of the gateway (``node`` None) or of ``node``'s agent, from a loaded config
    (``config_path``: its file as given, links not resolved; default: the loader's).

    Raises ValueError when ``node`` is not an agent node of ``config``.
    """
    if node is not None and node not in config.agent_nodes:
        agents = ", ".join(config.agent_nodes) or "none: no node has an url"
        why = f"{node!r} is not a node of the config"
        if node == config.local_node:
            why = f"{node!r} is the gateway's own node (no url): install it without --agent"
        raise ValueError(f"--agent {why}; the agent nodes are: {agents}")
    source = config_path or config.source
    if source is None:
        raise ValueError("the config was not loaded from a file: a unit needs its path")
    if node is None:
        state = config.state_dir
        ports = [split_listen(config.listen)[1]]
        if config.wyoming is not None:
            ports.append(split_listen(config.wyoming.listen)[1])
        here = config.local_node
    else:
        spec = config.nodes[node]
        state = spec.state_dir or config.state_dir / f"agent-{node}"
        ports = [urlsplit(spec.url or "").port or 80]  # as `modelyard agent` listens
        here = node
    s = config.scheduler
    return UnitSpec(
        executable=executable,
        config=source,
        state_dir=state,
        env_file=env_file,
        node=node,
        user_unit=user_unit,
        run_as=None if user_unit else run_as,
        caches=_engine_caches(config, here, home),
        writable=_config_dirs(config, here),
        stop_timeout_s=int(s.drain_timeout + s.stop_grace) + STOP_MARGIN_S,
        low_port=min(ports) < 1024,
        path=path,
    )


def _engine_caches(config: Config, node: str | None, home: Path | None) -> tuple[Path, ...]:
    """What the node's engines write in the account's home: its caches (Hugging Face,
    llama.cpp, vLLM, torch), Triton's kernels and vLLM's settings, Ollama's key and models."""
    if home is None:
        return ()
    found = [home / ".cache"]
    engines = {getattr(config.models[m], "engine", "") for m in _models_of(config, node)}
    if "vllm" in engines:
        found += [home / ".triton", home / ".config" / "vllm"]
    if "ollama" in engines:
        found.append(home / ".ollama")
    return tuple(found)


def _config_dirs(config: Config, node: str | None) -> tuple[Path, ...]:
    """The folders the config names for the node's engines: a cwd, an Ollama models_dir."""
    found = [
        value
        for name in _models_of(config, node)
        for attr in ("cwd", "models_dir")
        if isinstance(value := getattr(config.models[name], attr, None), Path)
    ]
    return tuple(dict.fromkeys(found))


def _models_of(config: Config, node: str | None) -> list[str]:
    return [name for name in config.models if config.node_of(name) == node]


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text for ``spec``."""
    what = f"agent of node {spec.node}" if spec.node else "gateway"
    lines = [MARKER, "# Change settings with `systemctl edit`: a drop-in survives re-installs."]
    lines += ["[Unit]", f"Description=modelyard {what} ({_esc(str(spec.config))})"]
    if not spec.user_unit:  # a user manager cannot order itself after system targets
        lines += [
            "# Clients, agents and remote engines are all over the network.",
            "After=network-online.target",
            "Wants=network-online.target",
        ]
    lines += [
        "# Five failed starts in five minutes (a config that no longer loads, a port in use):",
        "# give up rather than fill the journal; `systemctl reset-failed` clears it.",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
    ]
    if spec.run_as is not None:
        lines.append(f"User={_esc(spec.run_as)}")
    args = ["-c", str(spec.config)]
    args = ["serve", *args] if spec.node is None else ["agent", *args, "--node", spec.node]
    exe = _quote(_esc(str(spec.executable)))  # no $ expansion in the program's own path
    lines.append("ExecStart=" + " ".join([exe, *(_exec_arg(a) for a in args)]))
    if spec.node is None:  # the gateway reads its config again on SIGHUP (an agent would end)
        lines.append("ExecReload=/bin/kill -HUP $MAINPID")
    lines += [
        "# Secrets the config reads as ${VAR} (agent tokens, API keys); '-': may be absent.",
        f"EnvironmentFile=-{_esc(str(spec.env_file))}",
        "# The install's own bin folder first: its llama-server, python, vllm.",
        _quoted_line("Environment=", f"PATH={spec.path}"),
        "# Each line reaches the journal when written; the journal stamps the time.",
        "Environment=PYTHONUNBUFFERED=1",
        "SyslogIdentifier=" + ("modelyard" if spec.node is None else "modelyard-agent"),
        "Restart=on-failure",
        "RestartSec=5s",
        "# SIGTERM to modelyard alone: it lets running answers finish, then stops its engines",
        "# (drain_timeout + stop_grace + a margin); SIGKILL to what is left once it exits.",
        "KillMode=mixed",
        f"TimeoutStopSec={spec.stop_timeout_s}s",
    ]
    if spec.low_port and not spec.user_unit and spec.run_as not in (None, "root"):
        lines += ["# It listens below port 1024.", "AmbientCapabilities=CAP_NET_BIND_SERVICE"]
    lines += _hardening(spec)
    wanted = "default.target" if spec.user_unit else "multi-user.target"
    lines += ["", "[Install]", f"WantedBy={wanted}", ""]
    return "\n".join(lines)


def _hardening(spec: UnitSpec) -> list[str]:
    lines = ["", "# Hardening."]
    if spec.user_unit:  # (without user namespaces the unit fails: status 226/NAMESPACE)
        lines += ["# A user manager sandboxes only in a user namespace.", "PrivateUsers=yes"]
    lines += [
        "# No privilege gained through setuid programs; no engine needs any.",
        "NoNewPrivileges=yes",
        "# The whole file system read-only but for the paths below (/dev, /proc, /sys stay).",
        "ProtectSystem=strict",
    ]
    state = spec.state_dir
    managed = state_directory(spec)
    if managed is not None:
        lines += [
            "# The state dir (stores, engine logs): made and given to the account by systemd.",
            f"StateDirectory={_esc(managed)}",
            "StateDirectoryMode=0750",
        ]
    else:
        lines += ["# The state dir (stores, engine logs).", _rw(state)]
    if spec.caches or spec.writable:
        lines.append("# What engines write: caches, downloads, their working folders.")
        lines += [_rw(p) for p in (*spec.caches, *spec.writable)]
    lines += ["# Homes read-only, not hidden: weights and the install itself may be there."]
    lines += ["ProtectHome=read-only"]
    if any(state.is_relative_to(t) for t in (Path("/tmp"), Path("/var/tmp"))):
        lines.append("# No PrivateTmp=: it would hide the state dir, which is in a tmp folder.")
    else:
        lines += ["# A /tmp of its own, emptied when it stops.", "PrivateTmp=yes"]
    lines += [
        "# No PrivateDevices=: engines need /dev/nvidia*, /dev/dri and /dev/kfd.",
        "# Kernel tunables, modules and cgroups: nothing here changes them.",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
    ]
    return lines


def state_directory(spec: UnitSpec) -> str | None:
    """``StateDirectory=`` for a system unit whose state dir is under /var/lib (systemd
    makes it and gives it to the account), else None: the state dir is made beforehand."""
    state = spec.state_dir
    if spec.user_unit or not state.is_relative_to(_VAR_LIB) or state == _VAR_LIB:
        return None
    return str(state.relative_to(_VAR_LIB))


def _rw(path: Path) -> str:
    # '-': a folder that is missing does not stop the unit from starting.
    return _quoted_line("ReadWritePaths=", f"-{path}")


def _esc(text: str) -> str:
    """``%`` starts a specifier in every unit setting: doubled, it stands for itself."""
    return text.replace("%", "%%")


def _quoted_line(key: str, value: str) -> str:
    return key + _quote(_esc(value))


def _exec_arg(arg: str) -> str:
    """One ExecStart= argument: ``$`` would expand a variable; ``;`` alone ends a command."""
    return _quote(_esc(arg).replace("$", "$$"))


def _quote(text: str) -> str:
    """``text`` as one word of a unit setting: in C-style double quotes when it must be."""
    if text and not any(c.isspace() or c in "\"'\\;" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
