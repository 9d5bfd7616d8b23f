"""``vllm``: a Hugging Face model (or a local folder) served by ``vllm serve``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from modelyard.engines.base import Engine, Launch, Upstream, gpu_env, missing_program
from modelyard.model_spec import Arg, ModelBase

_TENSOR_PARALLEL = ("--tensor-parallel-size", "-tp")


class VllmModel(ModelBase):
    """A Hugging Face model (or a local folder) served by ``vllm serve``."""

    engine: Literal["vllm"]
    model: str = Field(description="Hugging Face id or local path, vllm serve's MODEL.")
    max_model_len: int | None = Field(None, ge=1, description="Context window, --max-model-len.")
    args: list[Arg] = Field(default_factory=list, description="Extra vllm serve arguments.")
    env: dict[str, Arg] = Field(default_factory=dict)
    binary: str = Field("vllm", description="The vllm program: a name on PATH or a path.")

    @field_validator("args")
    @classmethod
    def _no_managed_flags(cls, value: list[str]) -> list[str]:
        instead = {
            "--port": "modelyard gives each instance a free port",
            "--host": "modelyard sets it from the node the model runs on",
            "--served-model-name": "the model's key under `models:` (and `aliases`) names it",
            "--gpu-memory-utilization": "use `memory_share` instead",
        }
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in instead:
                raise ValueError(f"{arg!r} is set by modelyard; {instead[flag]}")
        return value

    @property
    def engine_protocols(self) -> frozenset[str]:
        # Its server has /v1/messages and /v1/responses of its own.
        return frozenset(("anthropic", "responses"))

    @property
    def window(self) -> int | None:
        return self.max_model_len  # vLLM gives each request the whole window


class VllmEngine(Engine[VllmModel]):
    kind = "vllm"
    config = VllmModel

    def problem(self) -> str | None:
        return missing_program(self.model.binary, "pip install vllm, or set `binary`")

    def launch(self, port: int) -> Launch:
        m = self.model
        argv = [m.binary, "serve", m.model, "--host", self.listen, "--port", str(port)]
        # Answers then carry our name: no rewrite on the hot path.
        argv += ["--served-model-name", m.name]
        if m.max_model_len is not None:
            argv += ["--max-model-len", str(m.max_model_len)]
        if m.memory_share is not None:  # None: vLLM's own default (0.9 of each GPU)
            argv += ["--gpu-memory-utilization", f"{m.memory_share:g}"]
        if m.gpus and len(m.gpus) > 1 and not _has_flag(m.args, _TENSOR_PARALLEL):
            argv += ["--tensor-parallel-size", str(len(m.gpus))]
        argv += m.args
        env = {**m.env, **gpu_env(m.gpus)}
        return Launch(argv, env, None, "/health")

    def upstream(self, port: int) -> Upstream:
        return Upstream(f"http://{self.host}:{port}/v1", None)


def _has_flag(args: list[str], names: tuple[str, ...]) -> bool:
    return any(arg.split("=", 1)[0] in names for arg in args)


ENGINE = VllmEngine
