"""The config's nodes: each machine, its GPUs (declared or read) and its modes (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from modelyard.model_spec import Bytes, Seconds, Strict


class GpuSpec(Strict):
    """A GPU declared in the config (planning, or a machine without NVML)."""

    index: int = Field(ge=0)
    name: str = "GPU"
    memory: Bytes
    pcie_gen: int | None = Field(None, ge=1, le=7)
    pcie_width: int | None = Field(None, ge=1, le=32)


ModeKind = Literal["open", "gated", "drained"]


class ModeSpec(Strict):
    """A user-named mode: its kind, and whether entering it stops the node's models."""

    kind: ModeKind
    stop_models: bool = False


def _mode_shorthand(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


class AutoMode(Strict):
    """A mode the node enters by itself while another program uses its GPU, and leaves once
    that program is gone for ``leave_after``. A mode a person sets always wins."""

    mode: str = Field(description="The mode entered: one of the node's, gated or drained.")
    other_gpu_memory: Bytes | None = Field(
        None, description="Enter when programs not modelyard's use more than this on a GPU."
    )
    processes: list[str] = Field(
        default_factory=list,
        description="Or when a process by one of these names runs (glob: `steam`, `*.exe`).",
    )
    leave_after: Seconds = Field(60.0, ge=0, description="Left once none holds for this long.")


class Node(Strict):
    """A machine. The one without ``url`` is the gateway's own; the others run an agent."""

    url: str | None = Field(None, description="The agent's base URL, e.g. http://gamer:9100.")
    token: str | None = Field(None, description="Bearer token the agent requires.")
    address: str | None = Field(
        None,
        description="Where other nodes reach this machine: the gateway's own node needs it "
        "to hold a part of a model across nodes (its rpc-server listens there).",
    )
    gpus: Literal["auto"] | list[GpuSpec] = "auto"
    modes: dict[str, Annotated[ModeSpec, BeforeValidator(_mode_shorthand)]] = Field(
        default_factory=lambda: {"open": ModeSpec(kind="open"), "drained": ModeSpec(kind="drained")}
    )
    default_mode: str | None = None
    reserve: Bytes = Field(0, description="Memory kept free on each GPU (a desktop, a game).")
    serial_gpus: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="GPUs whose models take turns: while one generates, the others wait.",
    )
    state_dir: Path | None = Field(None, description="The agent's state; default: state_dir/NAME.")
    link_gbps: float | None = Field(
        None, gt=0, description="Its network link to the other nodes, Gbit/s (span: auto)."
    )
    gpus_file: Path | None = Field(
        None,
        description="GPU readings another program writes (a machine without NVML), read each "
        "round in place of NVML: JSON {gpus: [{index, name, memory, used, utilization}], "
        "processes: [{pid, name, gpu, used}]}.",
    )
    auto_mode: AutoMode | None = None
    engine_ports: str | None = Field(
        None,
        pattern=r"^[0-9]{1,5}-[0-9]{1,5}$",
        description="The ports its engines and rpc-servers listen on, FIRST-LAST (e.g. "
        "9200-9219), for a node behind a NAT whose forwarding names each port (WSL2's "
        "portproxy); default: any free port.",
    )

    engine_listen: str | None = Field(
        None,
        description="The address its engines and rpc-servers bind, when it is not the one "
        "the gateway reaches them at: 0.0.0.0 inside WSL2's NAT, where the url's address is "
        "Windows' and a portproxy forwards engine_ports; default: the url's host.",
    )

    @property
    def ports(self) -> range | None:
        """``engine_ports`` as a range (validated), or None: any free port."""
        if self.engine_ports is None:
            return None
        first, last = (int(p) for p in self.engine_ports.split("-"))
        return range(first, last + 1)

    @field_validator("token")
    @classmethod
    def _token_said(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "token is empty (a ${VAR} that is set to nothing?): give the agent's token, "
                "or leave `token` out for an agent that needs none"
            )
        return value

    @model_validator(mode="after")
    def _modes_known(self) -> Node:
        ports = self.ports
        if ports is not None and not (1024 <= ports.start and ports.stop - 1 <= 65535 and ports):
            raise ValueError(
                f"engine_ports {self.engine_ports!r}: FIRST-LAST with 1024 <= FIRST <= LAST "
                "<= 65535 (a port for each engine and rpc-server that may run at once)"
            )
        if not self.modes:
            raise ValueError("a node needs at least one mode")
        if self.default_mode is not None and self.default_mode not in self.modes:
            raise ValueError(
                f"default_mode {self.default_mode!r} is not one of its modes: "
                + ", ".join(self.modes)
            )
        auto = self.auto_mode
        if auto is not None:
            if auto.mode not in self.modes or self.modes[auto.mode].kind == "open":
                gated = [m for m, spec in self.modes.items() if spec.kind != "open"]
                raise ValueError(
                    f"auto_mode.mode {auto.mode!r} must be one of its gated or drained modes: "
                    + (", ".join(gated) or "it has none")
                )
            if auto.other_gpu_memory is None and not auto.processes:
                raise ValueError("auto_mode needs other_gpu_memory, processes, or both")
        if isinstance(self.gpus, list):
            indices = [g.index for g in self.gpus]
            if len(set(indices)) != len(indices):
                raise ValueError("two declared GPUs have the same index")
            unknown = sorted(set(self.serial_gpus) - set(indices))
            if unknown:
                raise ValueError(
                    f"serial_gpus names GPU {unknown[0]}, which is not declared "
                    f"(declared: {', '.join(map(str, indices)) or 'none'})"
                )
        return self

    def agent_listen(self) -> tuple[str, int]:
        """Where ``modelyard agent`` listens for this node unless told: inside a NAT, where
        its engines bind (``engine_listen``); else its url's host (every address for a
        name, which may stand for several), on the url's port."""
        parts = urlsplit(self.url or "")
        host, port = parts.hostname or "0.0.0.0", parts.port or 80
        if self.engine_listen:
            return self.engine_listen, port
        return (host if is_ip(host) else "0.0.0.0"), port

    @property
    def initial_mode(self) -> str:
        return self.default_mode or next(iter(self.modes))


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches ``host``: serving it open is no risk to the LAN."""
    return host == "localhost" or (is_ip(host) and ipaddress.ip_address(host).is_loopback)
