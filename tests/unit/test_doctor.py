"""``modelyard doctor`` on machines broken one way at a time: each problem is named, with its
fix; warnings do not fail; a broken config still gets the machine's checks.

No llama.cpp model here (its check runs llama-server: tests/e2e/test_doctor_e2e.py does);
the models are commands run by this Python, and every node declares its GPUs (none), so the
results do not depend on the machine's driver.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli.doctor import doctor
from modelyard.doctor import CHECKS, Check, Context, Result, load, run_checks
from modelyard.doctor import gpus as doctor_gpus
from modelyard.doctor.agents import clock_skew
from modelyard.doctor.gpus import Nvml
from tests.conftest import free_port

MODEL = f"  stub:\n    engine: command\n    command: [{sys.executable}, -c, 'pass', '{{port}}']\n"


def write(
    tmp: Path,
    *,
    listen: str | None = None,
    extra: str = "",
    models: str = MODEL,
    far: str | None = None,
    state: Path | None = None,
) -> Path:
    """A config: node ``here`` (the gateway's, no GPU), and ``far`` (an agent) when given
    its YAML flow mapping."""
    path = tmp / "modelyard.yaml"
    nodes = "nodes:\n  here: {gpus: []}\n" + (f"  far: {far}\n" if far else "")
    path.write_text(
        f"listen: {listen or f'127.0.0.1:{free_port()}'}\nstate_dir: {state or tmp / 'state'}\n"
        f"{nodes}{extra}models:\n{models}",
        encoding="utf-8",
    )
    return path


def cli(*args: str) -> tuple[int, list[dict[str, Any]]]:
    """The command through a typer app of its own, with --json: exit code and results."""
    app = typer.Typer()
    app.command()(doctor)
    done = CliRunner().invoke(app, [*args, "--json"])
    results = json.loads(done.stdout) if done.exit_code in (0, 1) else []
    return done.exit_code, results


def named(results: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [r for r in results if r["name"] == name]
    assert len(found) == 1, f"{name}: {results}"
    return found[0]


def only(path: Path, *names: str, node: str | None = None) -> list[Result]:
    """The results of the checks called ``names`` alone."""
    return run_checks(load(path, node), [c for c in CHECKS if c.name in names])


def test_a_sound_config_passes_with_every_result_in_shape(tmp_path: Path) -> None:
    code, results = cli("-c", str(write(tmp_path)))
    assert code == 0, results
    assert all(set(r) == {"name", "status", "message", "fix"} for r in results)
    assert all(r["status"] in ("ok", "warn", "info") for r in results)
    names = [r["name"] for r in results]
    assert names[0] == "config" and "engine command" in names
    for name in ("state dir", "port gateway", "access", "memory stub"):
        assert name not in names or named(results, name)["status"] != "fail"
    assert named(results, "state dir")["status"] == "info"  # made at the first start
    assert "does not exist yet" in named(results, "state dir")["message"]


def test_a_config_that_does_not_load_still_gets_the_machine_checks(tmp_path: Path) -> None:
    path = tmp_path / "modelyard.yaml"
    path.write_text("listen: 127.0.0.1:8000\nmodles: {}\n", encoding="utf-8")
    results = only(path, "config", "gpus", "weights", "ports")
    by_name = {r.name: r for r in results}
    assert by_name["config"].status == "fail"
    assert "modles: unknown key" in by_name["config"].message  # the loader's own words
    assert by_name["config"].fix and "modelyard check" in by_name["config"].fix
    assert by_name["gpus"].status in ("ok", "info")  # the machine is still read
    assert by_name["skipped"].status == "info"
    assert by_name["skipped"].message.endswith("weights, ports")


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    code, _ = cli("-c", str(write(tmp_path)), "--node", "nowhere")
    assert code == 2
    code, _ = cli("-c", str(write(tmp_path)), "--node", "here")  # no url: not an agent
    assert code == 2


def test_missing_weights_are_named_with_the_path(tmp_path: Path) -> None:
    weights = tmp_path / "absent.gguf"
    models = f"  big:\n    engine: llama.cpp\n    weights: {weights}\n"
    (result,) = only(write(tmp_path, models=models), "weights")
    assert (result.name, result.status) == ("weights big", "fail")
    assert result.message == f"weights file not found: {weights}"
    assert result.fix == "download it there, or point models.big.weights at the file"


def test_weights_that_are_not_gguf_are_named(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"not a model at all")
    models = f"  big:\n    engine: llama.cpp\n    weights: {weights}\n"
    (result,) = only(write(tmp_path, models=models), "weights")
    assert result.status == "fail" and "is not a GGUF file" in result.message


def test_a_missing_program_is_the_engine_s_problem(tmp_path: Path) -> None:
    models = "  stub:\n    engine: command\n    command: [no-such-program-here, '{port}']\n"
    (result,) = only(write(tmp_path, models=models), "engines")
    assert (result.name, result.status) == ("engine command", "fail")
    assert "'no-such-program-here' not found" in result.message and "(for stub)" in result.message


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, not listening: the answer comes at once
        port = held.getsockname()[1]
        code, results = cli("-c", str(write(tmp_path, listen=f"127.0.0.1:{port}")))
    assert code == 1
    result = named(results, "port gateway")
    assert result["status"] == "fail"
    assert result["message"] == f"127.0.0.1:{port} is in use by another program"
    assert f"sport = :{port}" in result["fix"]


def test_an_address_not_of_this_machine_is_named(tmp_path: Path) -> None:
    (result,) = only(write(tmp_path, listen="192.0.2.1:8000"), "ports")
    assert result.status == "fail" and "not an address of this machine" in result.message


def test_an_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    # Tests run as root, whom permissions do not stop: a folder under a file cannot be made.
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    (result,) = only(write(tmp_path, state=blocker / "sub"), "state dir")
    assert result.status == "fail"
    assert result.message == f"{blocker}/sub cannot be made: {blocker} is a file, not a folder"
    blocker_dir = tmp_path / "state"
    blocker_dir.write_text("a file where the folder goes")
    (result,) = only(write(tmp_path), "state dir")
    assert result.message == f"{blocker_dir} exists and is not a folder"


def test_a_lan_bind_without_keys_fails_and_allow_open_lan_warns(tmp_path: Path) -> None:
    (result,) = only(write(tmp_path, listen="0.0.0.0:8000"), "access")
    assert result.status == "fail"
    assert "0.0.0.0:8000 with no API keys: anyone on the network" in result.message
    assert result.fix and "access.keys" in result.fix
    opened = write(tmp_path, listen="0.0.0.0:8000", extra="access: {allow_open_lan: true}\n")
    (result,) = only(opened, "access")
    assert result.status == "warn"
    key = "access:\n  keys:\n    - {name: me, key: secret, scopes: [user, admin]}\n"
    (result,) = only(write(tmp_path, listen="0.0.0.0:8000", extra=key), "access")
    assert result.status == "ok" and "1 API key(s) required, 1 with admin" in result.message


def test_an_agent_without_token_on_the_lan_fails(tmp_path: Path) -> None:
    path = write(tmp_path, far="{url: 'http://0.0.0.0:9100', gpus: []}")
    (result,) = only(path, "access", node="far")
    assert result.status == "fail" and "with no token" in result.message
    (gateway,) = [r for r in only(path, "access") if "far" in r.message]
    assert gateway.status == "warn"


def test_an_agent_that_is_down_is_named_with_its_url(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    path = write(tmp_path, far=f"{{url: 'http://127.0.0.1:{port}', token: t, gpus: []}}")
    results = only(path, "agents", "clock")
    assert [(r.name, r.status) for r in results] == [("agent far", "fail")]  # no clock to read
    assert results[0].message == f"agent down at http://127.0.0.1:{port} (connection refused)"
    assert results[0].fix and "modelyard agent -c modelyard.yaml --node far" in results[0].fix


@contextlib.contextmanager
def fake_agent(skew: float) -> Iterator[int]:
    """An HTTP server answering /agent/status with a ``Date`` ``skew`` seconds off."""

    class Handler(BaseHTTPRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return formatdate(time.time() + skew, usegmt=True)

        def do_GET(self) -> None:
            body = b'{"name": "far", "mode": "open", "gpus": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("skew", "status"), [(0.0, "ok"), (30.0, "warn"), (-30.0, "warn")])
def test_clock_skew_is_warned_above_a_few_seconds(tmp_path: Path, skew: float, status: str) -> None:
    with fake_agent(skew) as port:
        path = write(tmp_path, far=f"{{url: 'http://127.0.0.1:{port}', token: t, gpus: []}}")
        agent, clock = only(path, "agents", "clock")
    assert (agent.name, agent.status) == ("agent far", "ok")
    assert (clock.name, clock.status) == ("clock far", status)
    if status == "warn":
        side = "ahead of" if skew > 0 else "behind"
        assert re.search(rf"clock is (29|30)\.\d s {side} this machine's", clock.message)
        assert "whole seconds" in clock.message and "logs" in clock.message


def test_clock_skew_counts_the_date_header_s_whole_seconds() -> None:
    date = "Thu, 01 Jan 2026 00:00:10 GMT"
    at = 1767225610.0  # that second, exactly
    skew = clock_skew(date, at + 0.2, at + 0.4)
    assert skew == pytest.approx((0.5 - 0.3, 0.6))
    assert clock_skew(None, at, at) is None and clock_skew("garbage", at, at) is None
    assert clock_skew(None, at, at + 0.2, their_time=at + 5) == pytest.approx((4.9, 0.1))


def test_a_check_that_raises_is_its_own_failure_and_the_others_run(tmp_path: Path) -> None:
    def broken(ctx: Context) -> list[Result]:
        raise RuntimeError("surprise")

    async def slow_broken(ctx: Context) -> list[Result]:
        raise OSError("no network")

    ctx = load(write(tmp_path), None)
    config = next(c for c in CHECKS if c.name == "config")
    results = run_checks(ctx, [Check("one", broken), config, Check("two", slow_broken)])
    assert [(r.name, r.status) for r in results] == [
        ("one", "fail"),
        ("config", "ok"),
        ("two", "fail"),
    ]
    assert results[0].message == "the check could not run: RuntimeError: surprise"


def test_text_output_has_a_mark_per_check_and_the_fix_indented(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(doctor)
    done = CliRunner().invoke(app, ["-c", str(write(tmp_path, listen="0.0.0.0:8000"))])
    assert done.exit_code == 1
    lines = done.stdout.splitlines()
    failed = next(i for i, ln in enumerate(lines) if ln.startswith("✗ access: "))
    assert lines[failed + 1].startswith("    fix: add a key")
    assert lines[0].startswith("✓ config: ")
    assert lines[-1].startswith("1 failed, ")


def on_node(path: Path, spec: str) -> None:
    """Node ``here`` of the config at ``path`` given ``spec`` (a YAML flow mapping)."""
    path.write_text(path.read_text().replace("here: {gpus: []}", f"here: {spec}"))


def gpus_file(tmp: Path, total: int, used: int) -> Path:
    """A ``gpus_file`` (what another program writes on a machine without NVML)."""
    path = tmp / "gpus.json"
    gpu = {"index": 0, "name": "Test GPU", "memory": total, "used": used}
    path.write_text(json.dumps({"gpus": [gpu], "processes": []}))
    return path


@pytest.mark.parametrize(
    ("memory", "status", "said"),
    [
        ("2GiB", "ok", "needs 2 GiB of 7 GiB free on GPU 0 (declared)"),
        ("8GiB", "warn", "not enough free now"),
        (
            "20GiB",
            "fail",
            "needs 20 GiB on GPU 0 (Test GPU), which has 16 GiB for models: it can never",
        ),
    ],
)
def test_memory_fit_is_judged_on_the_gpus_read_now(
    tmp_path: Path, memory: str, status: str, said: str
) -> None:
    readings = gpus_file(tmp_path, 16 * 1024**3, 9 * 1024**3)
    model = MODEL + f"    gpus: [0]\n    memory: {memory}\n"
    path = write(tmp_path, models=model)
    on_node(path, f"{{gpus_file: {readings}}}")
    (result,) = only(path, "memory")
    assert (result.name, result.status) == ("memory stub", status)
    assert said in result.message


def test_a_gpu_the_node_lacks_is_named(tmp_path: Path) -> None:
    readings = gpus_file(tmp_path, 16 * 1024**3, 0)
    path = write(tmp_path, models=MODEL + "    gpus: [1]\n    memory: 1GiB\n")
    on_node(path, f"{{gpus_file: {readings}}}")
    (result,) = only(path, "memory")
    assert result.status == "fail" and result.message.startswith("placed on GPU 1, which node")


def test_gpus_from_a_missing_gpus_file_are_warned_of(tmp_path: Path) -> None:
    path = write(tmp_path)
    on_node(path, "{gpus_file: /nope.json}")
    (result,) = only(path, "gpus")
    assert result.status == "warn" and "has no GPU readings" in result.message


def no_driver(node: str) -> Nvml:
    return Nvml(None, [], "Driver Not Loaded")


def test_no_driver_fails_only_models_placed_on_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_gpus, "_read_nvml", no_driver)
    auto = write(tmp_path)
    on_node(auto, "{gpus: auto}")
    (result,) = only(auto, "gpus")
    assert result.status == "warn"
    assert result.message.startswith("NVML cannot load (Driver Not Loaded): node here has no GPU")
    auto.write_text(auto.read_text() + "    gpus: [0]\n")
    (result,) = only(auto, "gpus")
    assert (
        result.status == "fail" and "so stub (placed on GPUs by `gpus:`) cannot" in result.message
    )
    (result,) = only(write(tmp_path), "gpus")  # declared: none
    assert (result.status, result.message) == (
        "info",
        "no NVIDIA driver (NVML: Driver Not Loaded): declared inventory in use: no GPU",
    )
