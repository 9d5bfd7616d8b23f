"""A part of a llama.cpp model on another node: ``ggml-rpc-server`` (llama.cpp's RPC backend),
whose devices the model's llama-server uses over the network (``models.NAME.span``).

Not an engine a model names (no ``ENGINE`` here): the node of each part runs one, supervised
like an engine, for as long as the model's instance runs. It has no HTTP: it is ready when
it accepts a connection. It has no authentication either: whoever reaches its port can use
its devices and read what they hold, so it listens only on the address the node's agent
listens on (docs/multi-node.md says what that exposes; ``modelyard check`` warns).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from modelyard.engines.base import Engine, Launch, Upstream
from modelyard.engines.llamacpp import LlamaCppModel, find_llama_server

NAMES = ("ggml-rpc-server", "rpc-server")  # its name since 2025, and before


def find_rpc_server(llama_server: str | None) -> str | None:
    """The rpc-server beside the llama-server that runs (one build makes both), else PATH."""
    if llama_server:
        for name in NAMES:
            beside = Path(llama_server).parent / name
            if os.access(beside, os.X_OK):
                return str(beside)
    return next((found for name in NAMES if (found := shutil.which(name))), None)


@dataclass(frozen=True)
class Parts:
    """What the model's llama-server is given of its parts: the rpc-servers' addresses in
    order, and the share of the layers of each of their devices, then of its own GPUs."""

    rpc: tuple[str, ...]
    split: tuple[float, ...]


def part_key(model: str) -> str:
    """The name a part is supervised and logged under on its node."""
    return f"{model}@rpc"


class RpcPart(Engine[LlamaCppModel]):
    """The rpc-server that holds a part of ``model`` on this node."""

    kind = "rpc"
    config = LlamaCppModel

    def _binary(self) -> str | None:
        configured = self.settings.llama_cpp.binary if self.settings is not None else None
        return find_rpc_server(find_llama_server(str(configured) if configured else None))

    def problem(self) -> str | None:
        if self._binary() is None:
            return (
                "ggml-rpc-server not found beside llama-server nor on PATH: a model across "
                "nodes needs llama.cpp built with -DGGML_RPC=ON on every node it spans"
            )
        return None

    def launch(self, port: int) -> Launch:
        binary = self._binary()
        assert binary is not None, "problem() is checked before launch()"
        threads = str(max(1, (os.cpu_count() or 2) // 2))  # for a CPU part; GPUs ignore it
        argv = [binary, "--host", self.listen, "--port", str(port), "--threads", threads]
        # health_path None: ready when it accepts a connection (it speaks no HTTP)
        return Launch(argv, {}, None, None)

    def upstream(self, port: int) -> Upstream:
        return Upstream(f"{self.host}:{port}")
