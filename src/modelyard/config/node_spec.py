"""The config's nodes: each machine, its GPUs (declared or read) and its modes (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from modelyard.model_spec import Bytes, Strict


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


class Node(Strict):
    """A machine. The one without ``url`` is the gateway's own; the others run an agent."""

    url: str | None = Field(None, description="The agent's base URL, e.g. http://gamer:9100.")
    token: str | None = Field(None, description="Bearer token the agent requires.")
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

    @model_validator(mode="after")
    def _modes_known(self) -> Node:
        if not self.modes:
            raise ValueError("a node needs at least one mode")
        if self.default_mode is not None and self.default_mode not in self.modes:
            raise ValueError(
                f"default_mode {self.default_mode!r} is not one of its modes: "
                + ", ".join(self.modes)
            )
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

    @property
    def initial_mode(self) -> str:
        return self.default_mode or next(iter(self.modes))
