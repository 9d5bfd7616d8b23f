"""GPU inventory: read with NVML where there is one, or taken from the config's declaration."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from modelyard.placement import Gpu

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
    """The GPUs of node ``name``: declared ones as written, else NVML's, else none."""
    if isinstance(node.gpus, list):
        return [
            Gpu(name, g.index, g.name, g.memory, 0, g.pcie_gen, g.pcie_width)
            for g in sorted(node.gpus, key=lambda g: g.index)
        ]
    return read_nvml(name) or []
