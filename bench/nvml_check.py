"""On a machine with an NVIDIA GPU: read it through modelyard's NVML path, see memory move,
and ask a real agent (gpus: auto) for its status and a placement refusal.

    python bench/nvml_check.py          # needs a GPU, nvidia-ml-py and torch (to allocate)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from modelyard.gpus import read_nvml
from modelyard.units import format_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from harness import free_port, launch, stop_process


def show(label: str) -> list:  # type: ignore[type-arg]
    gpus = read_nvml("here")
    assert gpus is not None, "NVML is not available here"
    for g in gpus:
        print(
            f"{label}: GPU {g.index} {g.name} used {format_bytes(g.used)} of "
            f"{format_bytes(g.total)}, PCIe gen {g.pcie_gen} x{g.pcie_width}, util {g.utilization}%"
        )
    return gpus


def main() -> None:
    before = show("before")
    import torch

    block = torch.empty(4 * 1024**3, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    after = show("after 4 GiB allocated")
    print(
        f"used grew by {format_bytes(after[0].used - before[0].used)} (expected about 4 GiB + "
        "the CUDA context)"
    )
    del block

    port = free_port()
    tmp = Path(tempfile.mkdtemp())
    total = before[0].total
    config = tmp / "gpu.yaml"
    config.write_text(f"""
state_dir: {tmp}
nodes:
  gateway: {{}}
  gpu:
    url: http://127.0.0.1:{port}
    token: t
    gpus: auto
models:
  share:
    engine: command
    node: gpu
    command: [sleep, "1000", "{{port}}"]
    memory_share: 0.45
  huge:
    engine: command
    node: gpu
    command: [sleep, "1000", "{{port}}"]
    memory: {total + 1024**3}
""")
    agent = launch(
        [sys.executable, "-m", "modelyard", "agent", "-c", str(config), "--node", "gpu"], None
    )
    try:
        for _ in range(100):
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/agent/status", headers={"Authorization": "Bearer t"}
                )
                status = json.load(urllib.request.urlopen(req, timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        print("agent status:", json.dumps({k: status[k] for k in ("gpus", "needs")}, indent=1))
    finally:
        stop_process(agent, 30)

    from modelyard.config import load_config
    from modelyard.estimate import need_for
    from modelyard.placement import Inventory, plan_eviction

    cfg = load_config(config)
    gpus = [g.__class__(**{**g.__dict__, "node": "gpu"}) for g in read_nvml("gpu") or []]
    inv = Inventory({(g.node, g.index): g for g in gpus})
    for name in ("share", "huge"):
        need = need_for(cfg, name, gpus, None)
        print(name, plan_eviction(name, None, {}, need, inv).explain())


if __name__ == "__main__":
    main()
