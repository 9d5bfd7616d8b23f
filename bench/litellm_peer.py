"""The peer bench/compare.py measures modelyard against: LiteLLM's proxy, in its own venv.

LiteLLM is never a dependency of modelyard: it lives in bench/.venv-litellm, which
bench/setup_litellm.sh makes (run from here when the venv is missing or unfinished), and runs
with one worker, no key, its logging at ERROR and its model cost map read from the package.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import BENCH, Running, free_port, launch, log, wait_http

LITELLM_VENV = BENCH / ".venv-litellm"


def ensure_litellm() -> tuple[Path | None, str]:
    """LiteLLM's CLI in bench/.venv-litellm (installed first if missing), or why not."""
    if not (LITELLM_VENV / ".complete").is_file():
        log(f"installing LiteLLM's proxy into {LITELLM_VENV} (bench/setup_litellm.sh)")
        done = subprocess.run(
            ["bash", str(BENCH / "setup_litellm.sh")], capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("WARNING")]
            return None, "bench/setup_litellm.sh failed: " + " / ".join(lines[-4:])
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.is_file():
        return None, f"{exe} is missing"
    return exe, (LITELLM_VENV / ".complete").read_text().strip()


def start_litellm(
    running: Running, exe: Path, tmp: Path, upstreams: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy, one worker, with one model per ``{name: api_base}``; (proc, base)."""
    lines = ["model_list:"]
    for name, api_base in upstreams.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {api_base}",
            "      api_key: none",
        ]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  set_verbose: false",
        "general_settings:",
        # No key, as for modelyard here; LiteLLM refuses to start keyless without this.
        "  dangerously_permit_weak_or_unset_master_key: true",
    ]
    config = tmp / "litellm.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    # Logging at ERROR; the model cost map from the package, not fetched from the network.
    env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_DOCS="True")
    port = free_port()
    logfile = tmp / "litellm.log"
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    argv = [str(exe), "--config", str(config), *listen, "--num_workers", "1"]
    proc = running.add(launch(argv, logfile, env=env, cwd=tmp))
    base = f"http://127.0.0.1:{port}"
    took = wait_http(base + "/health/liveliness", proc, logfile, 180)
    log(f"litellm up in {took:.1f} s (pid {proc.pid})")
    return proc, base
