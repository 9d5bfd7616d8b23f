"""GPU inventory: read with NVML where there is one, or from the file another program writes
(``nodes.NAME.gpus_file``), or taken from the config's declaration; and the processes that
hold GPU memory, for the auto mode (``auto_gate.py``)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.placement import Gpu


@dataclass(frozen=True)
class GpuProcess:
    """A process that holds memory on a GPU (NVML's list, or a ``gpus_file``'s)."""

    pid: int
    gpu: int
    used: int  # bytes
    name: str = ""


if TYPE_CHECKING:  # read_nvml runs without the config's dependencies
    from modelyard.config import Node


def read_nvml(node: str) -> list[Gpu] | None:
    """Every NVIDIA GPU of this machine, or None when NVML is not there (no driver, no GPU)."""
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return [_read_one(pynvml, node, i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _read_one(nvml: Any, node: str, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)

    def optional(getter: str) -> int | None:
        # Some readings are not supported on every board or in every VM.
        try:
            return int(getattr(nvml, getter)(handle))
        except nvml.NVMLError:
            return None

    utilization = temperature = None
    power = None
    with contextlib.suppress(nvml.NVMLError):
        utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    with contextlib.suppress(nvml.NVMLError):
        temperature = int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    with contextlib.suppress(nvml.NVMLError):
        power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000  # milliwatts
    return Gpu(
        node=node,
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        total=int(memory.total),
        used=int(memory.used),
        pcie_gen=optional("nvmlDeviceGetCurrPcieLinkGeneration"),
        pcie_width=optional("nvmlDeviceGetCurrPcieLinkWidth"),
        utilization=utilization,
        temperature=temperature,
        power=power,
        measured=True,
    )


def inventory(name: str, node: Node) -> list[Gpu]:
    """The GPUs of node ``name``: its ``gpus_file``'s, else declared ones as written, else
    NVML's, else none."""
    if node.gpus_file is not None:
        return read_gpus_file(name, node.gpus_file)[0]
    if isinstance(node.gpus, list):
        return [
            Gpu(name, g.index, g.name, g.memory, 0, g.pcie_gen, g.pcie_width)
            for g in sorted(node.gpus, key=lambda g: g.index)
        ]
    return read_nvml(name) or []


def processes(name: str, node: Node) -> list[GpuProcess]:
    """The processes holding memory on node ``name``'s GPUs: its ``gpus_file``'s, else NVML's
    (none on a machine without it)."""
    if node.gpus_file is not None:
        return read_gpus_file(name, node.gpus_file)[1]
    if isinstance(node.gpus, list):
        return []
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    found: list[GpuProcess] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for getter in (
                "nvmlDeviceGetComputeRunningProcesses",
                "nvmlDeviceGetGraphicsRunningProcesses",
            ):
                with contextlib.suppress(pynvml.NVMLError):
                    for p in getattr(pynvml, getter)(handle):
                        used = p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else 0
                        found.append(GpuProcess(int(p.pid), index, used))
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return found


def read_gpus_file(name: str, path: Path) -> tuple[list[Gpu], list[GpuProcess]]:
    """A ``gpus_file``: its GPUs and processes; none when it is missing or unreadable (the
    program that writes it may not have run yet)."""
    try:
        data = json.loads(path.expanduser().read_text(encoding="utf-8"))
        gpus = [
            Gpu(name, int(g["index"]), str(g.get("name", "GPU")), int(g["memory"]),
                int(g.get("used", 0)), utilization=g.get("utilization"), measured=True)
            for g in data.get("gpus", [])
        ]  # fmt: skip
        procs = [
            GpuProcess(
                int(p["pid"]), int(p.get("gpu", 0)), int(p.get("used", 0)), str(p.get("name", ""))
            )
            for p in data.get("processes", [])
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], []
    return gpus, procs
