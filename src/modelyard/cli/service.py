"""Commands that install and remove the systemd unit of the gateway or of a node's agent.

The unit's text comes from ``modelyard.service`` (pure); here: the config loaded as the
service will load it, the unit compared, written, removed. ``MODELYARD_UNIT_DIR`` replaces
the folder units go to (the tests write into a tmp dir).
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from modelyard.cli.options import DEFAULT_CONFIG, ConfigOpt
from modelyard.cli.output import err, out
from modelyard.config import ConfigError, load_config
from modelyard.config.loader import variables
from modelyard.service import (
    SYSTEM_ENV_FILE,
    SYSTEM_PATH,
    UnitSpec,
    is_ours,
    parse_env_file,
    render_unit,
    state_directory,
    unit_name,
    unit_spec,
)

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # exists only where systemd is PID 1

AgentOpt = Annotated[
    str | None,
    typer.Option("--agent", metavar="NODE", help="The agent of NODE, not the gateway."),
]
UserOpt = Annotated[bool, typer.Option("--user", help="A unit of your own (systemctl --user).")]


def install(
    config: ConfigOpt = DEFAULT_CONFIG,
    agent: AgentOpt = None,
    user: UserOpt = False,
    show: Annotated[bool, typer.Option("--print", help="Show the unit; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace our unit that differs.")] = False,
    run_as: Annotated[
        str | None,
        typer.Option(
            "--run-as",
            metavar="ACCOUNT",
            help="System units: the account it runs as; default: the one that ran sudo.",
        ),
    ] = None,
) -> None:
    """Write the systemd unit that runs the gateway (or NODE's agent) from this install."""
    if user and run_as is not None:
        _fail("--run-as is for system units: a --user unit runs as you", 2)
    account, home = _account(user, run_as)
    env_file = _config_home() / "modelyard" / "modelyard.env" if user else SYSTEM_ENV_FILE
    spec = _spec(config, agent, user, account, home, env_file)
    text = render_unit(spec)
    if show:
        typer.echo(text, nl=False)
        return
    folder = _unit_dir(user)
    target = folder / spec.name
    old = _read(target)
    if old is not None and not is_ours(old):
        _fail(f"{target} exists and was not written by modelyard: move it away first", 1)
    if old is not None and old != text and not force:
        diff = difflib.unified_diff(
            old.splitlines(keepends=True), text.splitlines(keepends=True), str(target), "new"
        )
        err.print("".join(diff), markup=False, highlight=False, end="")
        _fail(f"{target} exists and differs (above): --force replaces it", 1)
    if old == text:
        _say(f"{target} is already this unit: unchanged")
    else:
        _write(folder, target, text)
        _say(f"wrote {target}")
    _make_dirs(spec, account if not user else None)
    _next_steps(spec, user, account, config, replaced=old not in (None, text))


def uninstall(agent: AgentOpt = None, user: UserOpt = False) -> None:
    """Remove the unit `service install` wrote, and the links that enabled it."""
    folder = _unit_dir(user)
    name = unit_name(agent)
    target = folder / name
    old = _read(target)
    if old is None:
        _say(f"no {name} in {folder}: nothing to remove")
        return
    if not is_ours(old):
        _fail(f"{target} was not written by modelyard service install: left alone", 1)
    if not os.access(folder, os.W_OK):
        _fail(f"removing from {folder} needs root: run it with sudo, or --user", 1)
    # The links `systemctl enable` made: left dangling, `systemctl disable` could not undo.
    wants = folder.glob(f"*.wants/{name}")
    links = [link for link in wants if link.is_symlink() and link.resolve() == target.resolve()]
    for link in links:
        link.unlink()
    target.unlink()
    _say(f"removed {target}" + "".join(f"\nremoved {link}" for link in links))
    ctl = "systemctl --user" if user else "systemctl"
    steps = [] if _daemon_reload(user) else [f"{ctl} daemon-reload"]
    steps += [f"{ctl} stop {name}", f"{ctl} reset-failed {name}  # if it failed"]
    _say("if it still runs, stop it (the unit stays loaded until then):\n  " + "\n  ".join(steps))


def _spec(
    config: Path, agent: str | None, user: bool, account: str, home: Path, env_file: Path
) -> UnitSpec:
    """The unit's spec, from the config loaded as the service will load it: ``~`` is the
    account's home, ``${VAR}`` comes from the env file (not from this shell)."""
    secrets: dict[str, str] = {}
    try:
        secrets = parse_env_file(env_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        _say(f"cannot read {env_file} ({exc.strerror}): its variables are unset here", True)
    environ = {"HOME": str(home), "USER": account, "LOGNAME": account, **secrets}
    try:
        with _home(home):
            cfg = load_config(config, environ)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(f"[red]✗[/] {issue}", highlight=False)
        _fail(f"nothing was written: the config does not load (variables: {env_file})", 1)
    exe = _executable()
    try:
        return unit_spec(
            cfg,
            agent,
            executable=exe,
            env_file=env_file,
            user_unit=user,
            run_as=None if account == "root" else account,
            home=home,
            path=f"{exe.parent}:{SYSTEM_PATH}",
            config_path=Path(os.path.abspath(config)),  # a link stays one: it may be switched
        )
    except ValueError as exc:
        _fail(str(exc), 2)


def _account(user: bool, run_as: str | None) -> tuple[str, Path]:
    """The account the service runs as, and its home."""
    me = getpass.getuser()
    sudo = os.environ.get("SUDO_USER") if os.geteuid() == 0 else None
    name = me if user else run_as or sudo or me
    if name == me:
        return me, Path.home()
    try:
        return name, Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        _fail(f"--run-as {name}: no such account here", 2)


def _executable() -> Path:
    """This install's ``modelyard``: the one running, else the one beside its python."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "modelyard" and argv0.is_file():
        return Path(os.path.abspath(argv0))  # not resolved: a pipx link survives upgrades
    beside = Path(sys.executable).parent / "modelyard"
    if beside.is_file():
        return Path(os.path.abspath(beside))
    _fail("cannot find this install's `modelyard` executable: run the installed command", 1)


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def _unit_dir(user: bool) -> Path:
    if override := os.environ.get("MODELYARD_UNIT_DIR"):
        return Path(override)
    return _config_home() / "systemd" / "user" if user else SYSTEM_UNIT_DIR


@contextlib.contextmanager
def _home(home: Path) -> Iterator[None]:
    """``~`` in the config expands to ``home`` (the loader expands with $HOME)."""
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        yield
    finally:
        del os.environ["HOME"]
        if before is not None:
            os.environ["HOME"] = before


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", 1)


def _write(folder: Path, target: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # a --user folder is often not there yet
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        _fail(f"writing to {folder} needs root: run it with sudo, or use --user", 1)
    partial = target.with_name(f".{target.name}.new")  # renamed in place: never half a unit
    partial.write_text(text, encoding="utf-8")
    partial.chmod(0o644)
    partial.replace(target)


def _make_dirs(spec: UnitSpec, owner: str | None) -> None:
    """Make the missing folders the unit makes writable, owned by the account it runs as
    (ProtectSystem=strict: the service could not make them); those the config names are
    the user's to make."""
    wanted = [*spec.caches]
    if state_directory(spec) is None:  # else systemd makes it
        wanted.append(spec.state_dir)
    uid = gid = -1  # chown's "unchanged"
    if owner is not None and os.geteuid() == 0:  # made by root for the account
        uid, gid = pwd.getpwnam(owner)[2:4]
    for path in wanted:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
            for made in missing:
                os.chown(made, uid, gid)
        except OSError as exc:
            _say(f"could not make {path} ({exc.strerror}): make it before starting", True)
        else:
            if missing:
                _say(f"made {path}")
    for path in spec.writable:
        if not path.exists():
            _say(f"{path} (in the config) does not exist", True)


def _daemon_reload(user: bool) -> bool:
    """``systemctl daemon-reload`` where systemd runs; whether it was done."""
    if not SYSTEMD_RUNNING.is_dir():
        _say("systemd does not run here (no /run/systemd/system): run these where it does", True)
        return False
    argv = ["systemctl", *(["--user"] if user else []), "daemon-reload"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        why = (done.stderr.strip() or f"exit status {done.returncode}") if done.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    if why:
        _say(f"{' '.join(argv)}: {why}", True)
        return False
    _say(f"ran {' '.join(argv)}")
    return True


def _next_steps(spec: UnitSpec, user: bool, account: str, config: Path, replaced: bool) -> None:
    ctl = "systemctl --user" if user else "systemctl"
    journal = "journalctl --user" if user else "journalctl"
    steps = [] if _daemon_reload(user) else [f"{ctl} daemon-reload"]
    steps.append(f"{ctl} enable --now {spec.name}")
    if replaced:
        steps.append(f"{ctl} restart {spec.name}  # if it ran: the new unit takes effect")
    steps.append(f"{journal} -u {spec.name} -f")
    if user:
        steps.append(f"loginctl enable-linger {account}  # start it at boot, not at login")
    _say("next:\n" + "\n".join(f"  {s}" for s in steps))
    names = variables(config.read_text(encoding="utf-8", errors="replace"))
    if names:
        where = "exists" if spec.env_file.exists() else "does not exist yet"
        _say(
            f"the config reads {', '.join(names)}: set them in {spec.env_file} ({where}; "
            "KEY=VALUE lines, chmod 600), or their defaults apply"
        )
    if spec.low_port and user:
        _say("it listens below port 1024, which a --user unit cannot bind", True)


def _say(text: str, warn: bool = False) -> None:
    """Print ``text`` as it is (paths may hold [brackets]); ``warn``: to stderr, flagged."""
    if warn:
        err.print("[yellow]![/] ", end="")
    (err if warn else out).print(text, markup=False, highlight=False)


def _fail(message: str, code: int) -> NoReturn:
    err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)
