"""systemd units: the rendering, systemd's own verdict on it, and install/uninstall on disk.

The commands are not in ``modelyard.cli``'s app yet: a local app registers them as it will.
Units go to a tmp dir (``MODELYARD_UNIT_DIR``); ``systemd-analyze verify`` works offline,
without systemd as PID 1, and the ExecStart it checks is this venv's real ``modelyard``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli import service as service_cli
from modelyard.config import load_config
from modelyard.config.loader import variables
from modelyard.service import (
    MARKER,
    UnitSpec,
    is_ours,
    parse_env_file,
    render_unit,
    unit_name,
    unit_spec,
)

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
S2 = EXAMPLES / "s2-two-machines.yaml"
DEMO = EXAMPLES / "demo.yaml"
TWO_NODES = EXAMPLES / "demo-two-nodes.yaml"
EXE = Path(sys.executable).parent / "modelyard"  # the real one: verify checks it exists
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

app = typer.Typer()
service_app = typer.Typer()
app.add_typer(service_app, name="service")
service_app.command("install")(service_cli.install)
service_app.command("uninstall")(service_cli.uninstall)


def spec(**changes: object) -> UnitSpec:
    base = UnitSpec(
        executable=EXE,
        config=S2,
        state_dir=Path("/var/lib/modelyard"),
        env_file=Path("/etc/modelyard/modelyard.env"),
        run_as="me",
        caches=(Path("/home/me/.cache"),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# Rendering ---------------------------------------------------------------------------------

RENDER_CASES = {
    "gateway": (
        spec(),
        [
            MARKER,
            f"ExecStart={EXE} serve -c {S2}",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "User=me",
            "Restart=on-failure",
            "RestartSec=5s",
            "StartLimitBurst=5",
            "KillMode=mixed",
            "TimeoutStopSec=70s",
            "EnvironmentFile=-/etc/modelyard/modelyard.env",
            "Environment=PYTHONUNBUFFERED=1",
            "SyslogIdentifier=modelyard",
            "After=network-online.target",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "StateDirectory=modelyard",
            "ReadWritePaths=-/home/me/.cache",
            "WantedBy=multi-user.target",
        ],
        ["PrivateDevices=", "PrivateUsers=", "AmbientCapabilities=", "ProtectHome=yes"],
    ),
    "agent": (
        spec(node="gamer", state_dir=Path("/var/lib/modelyard/agent-gamer")),
        [
            f"ExecStart={EXE} agent -c {S2} --node gamer",
            "SyslogIdentifier=modelyard-agent",
            "StateDirectory=modelyard/agent-gamer",
        ],
        ["PrivateDevices=", "ExecReload="],
    ),
    "user unit": (
        spec(user_unit=True, run_as=None, state_dir=Path("/home/me/.local/state/my")),
        [
            "PrivateUsers=yes",
            "ReadWritePaths=-/home/me/.local/state/my",
            "WantedBy=default.target",
            "KillMode=mixed",
        ],
        ["User=", "StateDirectory=", "After=network-online.target", "multi-user.target"],
    ),
    "state dir elsewhere": (
        spec(state_dir=Path("/srv/modelyard")),
        ["ReadWritePaths=-/srv/modelyard"],
        ["StateDirectory="],
    ),
    "state dir in /tmp": (
        spec(state_dir=Path("/tmp/my-state")),
        ["ReadWritePaths=-/tmp/my-state"],
        ["PrivateTmp=yes"],
    ),
    "low port": (
        spec(low_port=True),
        ["AmbientCapabilities=CAP_NET_BIND_SERVICE"],
        [],
    ),
    "low port as root": (spec(low_port=True, run_as=None), [], ["AmbientCapabilities=", "User="]),
    "quoting": (
        spec(executable=Path("/opt/my apps/modelyard"), config=Path("/etc/100% sure.yaml")),
        ['ExecStart="/opt/my apps/modelyard" serve -c "/etc/100%% sure.yaml"'],
        [],
    ),
}


@pytest.mark.parametrize("case", RENDER_CASES)
def test_render(case: str) -> None:
    unit, present, absent = RENDER_CASES[case]
    lines = render_unit(unit).splitlines()
    assert lines[0] == MARKER
    for line in present:
        assert line in lines, line
    for start in absent:
        assert not any(line.startswith(start) for line in lines), start


def test_unit_names() -> None:
    assert unit_name(None) == "modelyard.service"
    assert unit_name("gamer") == "modelyard-agent-gamer.service"
    assert unit_name("gpu box/2") == "modelyard-agent-gpu\\x20box\\x2f2.service"


def test_small_parsers() -> None:
    assert is_ours(render_unit(spec()))
    assert not is_ours("[Unit]\n" + MARKER)
    env = "# a comment\nA=1\n  B = 'two words'\nC=\"x\"\nnot a line\n"
    assert parse_env_file(env) == {"A": "1", "B": "two words", "C": "x"}
    assert variables("a: ${B:-x}\nc: ${A}\nd: ${A}\n") == ["A", "B"]


def test_spec_from_the_s2_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = load_config(S2)
    gateway = unit_spec(cfg, None, executable=EXE, env_file=Path("/e.env"), home=home)
    assert gateway.state_dir == Path("/var/lib/modelyard")
    assert gateway.stop_timeout_s == 30 + 10 + 30  # drain_timeout + stop_grace + margin
    assert gateway.caches == (home / ".cache",)
    assert gateway.writable == (Path("/srv/chatterbox-tts-api"),)  # the TTS command's cwd
    assert not gateway.low_port
    gamer = unit_spec(cfg, "gamer", executable=EXE, env_file=Path("/e.env"), home=home)
    assert gamer.state_dir == Path("/var/lib/modelyard/agent-gamer")
    assert gamer.caches == (home / ".cache", home / ".triton", home / ".config" / "vllm")
    assert gamer.writable == ()


@pytest.mark.parametrize(
    ("config", "node", "words"),
    [
        (S2, "server", ["gateway's own node", "agent nodes are: gamer"]),
        (S2, "nope", ["'nope' is not a node", "agent nodes are: gamer"]),
        (DEMO, "local", ["gateway's own node", "none"]),
    ],
)
def test_spec_refuses_a_node_that_runs_no_agent(config: Path, node: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        unit_spec(load_config(config), node, executable=EXE, env_file=Path("/e.env"))
    for word in words:
        assert word in str(caught.value)


# systemd's verdict ---------------------------------------------------------------------------


def verify(unit: Path, user: bool = False) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit``, offline: a user manager needs a runtime dir."""
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    argv = [ANALYZE, *(["--user"] if user else []), "verify", "--man=no", str(unit)]
    if user:
        runtime = unit.parent / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


@needs_analyze
@pytest.mark.parametrize(
    ("config", "node", "user"),
    [(S2, None, False), (S2, "gamer", False), (TWO_NODES, None, True), (TWO_NODES, "gamer", True)],
)
def test_systemd_accepts_the_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Path, node: str | None, user: bool
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(config)
    made = unit_spec(
        cfg, node, executable=EXE, env_file=tmp_path / "m.env", user_unit=user, run_as="me"
    )
    unit = tmp_path / made.name
    unit.write_text(render_unit(made))
    done = verify(unit, user)
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_systemd_accepts_quoted_paths(tmp_path: Path) -> None:
    odd = tmp_path / "my 100% $HOME dir"
    odd.mkdir()
    (odd / "modelyard").symlink_to(EXE)
    unit = tmp_path / "modelyard.service"
    unit.write_text(render_unit(spec(executable=odd / "modelyard", config=odd / "a b.yaml")))
    done = verify(unit)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_verify_would_see_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a bad value and a missing program are both reported."""
    unit = tmp_path / "modelyard.service"
    text = render_unit(spec(executable=tmp_path / "missing"))
    unit.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    done = verify(unit)
    assert "sometimes" in done.stderr and "missing" in done.stderr


# install and uninstall -------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A tmp unit dir and home; systemd not running; no sudo. The state dir of the demo is
    under that home: the service does not see this shell's MODELYARD_STATE_DIR."""
    units = tmp_path / "units"
    monkeypatch.setenv("MODELYARD_UNIT_DIR", str(units))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELYARD_STATE_DIR", str(tmp_path / "not-seen"))
    for name in ("XDG_CONFIG_HOME", "SUDO_USER", "MODELYARD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(service_cli, "SYSTEMD_RUNNING", tmp_path / "no-systemd")
    yield units


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["service", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_print_writes_nothing(env: Path, tmp_path: Path) -> None:
    code, out, _ = run("install", "-c", str(DEMO), "--print")
    assert code == 0
    assert out.startswith(MARKER) and f"ExecStart={EXE} serve -c {DEMO}\n" in out
    assert f"ReadWritePaths=-{tmp_path}/home/.local/state/modelyard/demo\n" in out
    assert not env.exists() and not (tmp_path / "home").exists()


@needs_analyze
def test_install_then_uninstall(env: Path, tmp_path: Path) -> None:
    code, printed, _ = run("install", "-c", str(DEMO), "--print")
    code, out, err = run("install", "-c", str(DEMO))
    unit = env / "modelyard.service"
    assert code == 0, err
    assert unit.read_text() == printed
    assert (tmp_path / "home" / ".local" / "state" / "modelyard" / "demo").is_dir()
    assert (tmp_path / "home" / ".cache").is_dir()
    assert "not-seen" not in unit.read_text()
    assert f"wrote {unit}" in out
    for step in ("systemctl daemon-reload", "systemctl enable --now modelyard.service"):
        assert step in out
    assert "journalctl -u modelyard.service -f" in out
    assert "MODELYARD_STATE_DIR" in out  # the variables the config reads, for the env file
    assert "systemd does not run here" in err
    assert verify(unit).stderr == ""

    code, out, _ = run("install", "-c", str(DEMO))
    assert (code, out.splitlines()[0]) == (0, f"{unit} is already this unit: unchanged")

    wants = env / "multi-user.target.wants"
    wants.mkdir()
    (wants / "modelyard.service").symlink_to(unit)
    code, out, _ = run("uninstall")
    assert code == 0
    assert not unit.exists() and not (wants / "modelyard.service").is_symlink()
    assert "systemctl stop modelyard.service" in out
    assert run("uninstall")[:2] == (0, f"no modelyard.service in {env}: nothing to remove\n")


def test_a_unit_that_differs_needs_force(env: Path) -> None:
    assert run("install", "-c", str(DEMO))[0] == 0
    unit = env / "modelyard.service"
    edited = unit.read_text().replace("RestartSec=5s", "RestartSec=1s")
    unit.write_text(edited)
    code, _, err = run("install", "-c", str(DEMO))
    assert code == 1
    assert "-RestartSec=1s" in err and "+RestartSec=5s" in err and "--force" in err
    assert unit.read_text() == edited
    code, out, _ = run("install", "-c", str(DEMO), "--force")
    assert code == 0 and "systemctl restart modelyard.service" in out
    assert "RestartSec=5s" in unit.read_text()


def test_a_file_it_did_not_write_is_left_alone(env: Path) -> None:
    env.mkdir()
    unit = env / "modelyard.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    code, _, err = run("install", "-c", str(DEMO), "--force")
    assert code == 1 and "not written by modelyard" in err
    code, _, err = run("uninstall")
    assert code == 1 and "left alone" in err
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_a_config_that_does_not_load(env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  x:\n    engine: nope\n")
    code, _, err = run("install", "-c", str(bad))
    assert code == 1
    assert f"{bad}:3" in err and "nothing was written" in err
    needs = tmp_path / "needs.yaml"  # a variable set in this shell, not in the env file
    needs.write_text("state_dir: ${MODELYARD_STATE_DIR}\n")
    code, _, err = run("install", "-c", str(needs))
    assert code == 1 and "MODELYARD_STATE_DIR is not set" in err
    assert "/etc/modelyard/modelyard.env" in err
    code, _, err = run("install", "-c", str(tmp_path / "absent.yaml"))
    assert code == 1 and "cannot read" in err
    assert not env.exists()


@pytest.mark.parametrize(
    ("node", "words"),
    [("server", ["gateway's own node", "gamer"]), ("nope", ["not a node", "gamer"])],
)
def test_agent_must_be_an_agent_node(env: Path, node: str, words: list[str]) -> None:
    code, _, err = run("install", "-c", str(S2), "--agent", node)
    assert code == 2
    assert all(word in err for word in words), err
    assert not env.exists()


def test_agent_unit(env: Path, tmp_path: Path) -> None:
    code, out, err = run("install", "-c", str(S2), "--agent", "gamer")
    assert code == 0, err
    text = (env / "modelyard-agent-gamer.service").read_text()
    assert f"ExecStart={EXE} agent -c {S2} --node gamer\n" in text
    assert "StateDirectory=modelyard/agent-gamer\n" in text  # systemd makes /var/lib's
    assert (tmp_path / "home" / ".triton").is_dir()  # vLLM's kernels: writable, made
    assert "GAMER_AGENT_TOKEN" in out


def test_user_unit_and_its_env_file(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELYARD_UNIT_DIR")
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    (xdg / "modelyard").mkdir(parents=True)
    (xdg / "modelyard" / "modelyard.env").write_text(f"MODELYARD_STATE_DIR={tmp_path}/envs\n")
    code, out, err = run("install", "--user", "-c", str(DEMO))
    assert code == 0, err
    text = (xdg / "systemd" / "user" / "modelyard.service").read_text()
    assert f"EnvironmentFile=-{xdg}/modelyard/modelyard.env\n" in text
    assert f"ReadWritePaths=-{tmp_path}/envs\n" in text  # ${VAR} read from the env file
    assert "PrivateUsers=yes\n" in text and "User=" not in text
    assert "systemctl --user enable --now modelyard.service" in out
    assert "loginctl enable-linger" in out
    assert run("install", "--user", "--run-as", "x", "-c", str(DEMO))[0] == 2


def test_home_in_the_config_is_the_accounts(env: Path) -> None:
    code, out, _ = run("install", "-c", str(DEMO), "--print", "--run-as", "nobody")
    home = Path(os.path.expanduser("~nobody"))
    assert code == 0
    assert "User=nobody\n" in out
    assert f"ReadWritePaths=-{home}/.local/state/modelyard/demo\n" in out
    assert run("install", "-c", str(DEMO), "--run-as", "no-such-account-here")[0] == 2


def test_a_system_unit_needs_root(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.access  # (root may write anywhere: the unit dir is made to look read-only)
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != env and real(p, mode))
    code, _, err = run("install", "-c", str(DEMO))
    assert code == 1 and "needs root" in err and "--user" in err


def test_daemon_reload_where_systemd_runs(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = tmp_path / "systemd-runs"
    running.mkdir()
    monkeypatch.setattr(service_cli, "SYSTEMD_RUNNING", running)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "called"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {called}\n')
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out, err = run("install", "-c", str(DEMO))
    assert code == 0, err
    assert called.read_text() == "daemon-reload\n"
    assert "ran systemctl daemon-reload" in out and "  systemctl daemon-reload" not in out


@pytest.mark.parametrize(("journal", "prefix"), [("", ""), ("8:1234", "<4>")])
def test_under_systemd_a_warning_carries_its_journal_priority(journal: str, prefix: str) -> None:
    # systemd sets JOURNAL_STREAM when stderr is the journal, which reads a leading <N> as
    # the line's priority: `journalctl -u modelyard -p warning` then finds the warnings.
    code = (
        "import logging; from modelyard.cli.journal import log_to_stderr; log_to_stderr(); "
        "logging.getLogger('modelyard.t').warning('careful'); "
        "logging.getLogger('modelyard.t').info('fine')"
    )
    env = {**os.environ, "JOURNAL_STREAM": journal}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    info = "<6>" if prefix else ""
    assert done.stderr.splitlines() == [
        f"{prefix}WARNING   modelyard.t: careful",
        f"{info}INFO      modelyard.t: fine",
    ]


@pytest.mark.parametrize(("journal", "error", "info"), [("", "", ""), ("8:1234", "<3>", "<6>")])
def test_under_systemd_uvicorns_lines_carry_their_journal_priority_too(
    journal: str, error: str, info: str
) -> None:
    # uvicorn configures its own loggers (as uvicorn.run does with what serve passes it).
    code = (
        "import logging.config, uvicorn.config; "
        "from modelyard.cli.journal import uvicorn_logging; "
        "logging.config.dictConfig(uvicorn_logging().get('log_config', "
        "uvicorn.config.LOGGING_CONFIG)); "
        "logging.getLogger('uvicorn.error').error('Exception in ASGI application'); "
        "logging.getLogger('uvicorn.error').info('Uvicorn running')"
    )
    env = {**os.environ, "JOURNAL_STREAM": journal}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stderr.splitlines() == [
        f"{error}ERROR:    Exception in ASGI application",
        f"{info}INFO:     Uvicorn running",
    ]
