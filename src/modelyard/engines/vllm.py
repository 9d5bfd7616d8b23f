"""``vllm``: a Hugging Face model (or a local folder) served by ``vllm serve``."""

from __future__ import annotations

from modelyard.config import VllmModel
from modelyard.engines.base import Engine, Launch, Upstream, gpu_env, missing_program

_TENSOR_PARALLEL = ("--tensor-parallel-size", "-tp")


class VllmEngine(Engine):
    kind = "vllm"

    def __init__(self, model: VllmModel, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.model = model

    def problem(self) -> str | None:
        return missing_program(self.model.binary, "pip install vllm, or set `binary`")

    def launch(self, port: int) -> Launch:
        m = self.model
        argv = [m.binary, "serve", m.model, "--host", self.host, "--port", str(port)]
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
