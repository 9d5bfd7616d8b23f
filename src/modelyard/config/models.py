"""The models of the config file: what each engine's model takes (pure).

The base every model shares (names, placement, slots, timeouts, the endpoints it serves)
and one class per engine, told apart by ``engine:``; with the small types every part of
the schema uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from modelyard.units import parse_bytes, parse_duration

Seconds = Annotated[float, BeforeValidator(parse_duration)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
LOCAL_NODE = "local"  # the gateway's own machine when the file names no nodes


def _scalar_text(value: Any) -> Any:
    # YAML reads `8080` or `0.7` in an argument list as numbers; a command line wants text.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Arg = Annotated[str, BeforeValidator(_scalar_text)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelTimeouts(Strict):
    """A model's own limits on one upstream request; unset ones come from `timeouts`."""

    connect: Seconds | None = Field(None, gt=0)
    first_byte: Seconds | None = Field(None, gt=0)
    idle: Seconds | None = Field(None, gt=0)


class Timeouts(Strict):
    """Limits on one upstream request (docs/config.md, "Timeouts")."""

    connect: Seconds = Field(10.0, gt=0, description="Opening the connection to the server.")
    first_byte: Seconds = Field(
        600.0,
        gt=0,
        description="From sending the request to the first byte of the answer (a whole "
        "answer when it is not streamed).",
    )
    idle: Seconds = Field(120.0, gt=0, description="Longest silence inside a streamed answer.")

    def over(self, own: ModelTimeouts) -> Timeouts:
        """These defaults with a model's own values put over them."""
        return self.model_copy(update=own.model_dump(exclude_none=True))


Endpoint = Literal["chat", "completions", "embeddings"]
ENDPOINTS: frozenset[str] = frozenset(("chat", "completions", "embeddings"))


class ModelBase(Strict):
    """What every model has, whatever its engine."""

    name: str = Field("", description="Filled from the key under `models:`.")
    aliases: list[str] = Field(default_factory=list)
    ttl: Seconds = Field(0.0, description="Idle time before the instance is stopped; 0 = never.")
    pinned: bool = Field(False, description="Never stopped to make room for another model.")
    swap_group: str | None = Field(None, description="Members of a group never run together.")
    start_timeout: Seconds | None = None
    description: str = ""
    # Where it may run (docs/config.md, "Placement").
    node: str | None = Field(None, description="Node that runs it; default: the gateway's own.")
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="GPU indices on its node; [] = CPU only; default: all of them."
    )
    tensor_split: list[Annotated[float, Field(gt=0)]] | None = None
    memory: Bytes | None = Field(None, description="Declared memory need, over all its GPUs.")
    memory_share: float | None = Field(None, gt=0, le=1, description="Share of each GPU's memory.")
    moe: bool | None = Field(None, description="Mixture of experts; default: read from the GGUF.")
    manual_only: bool = Field(False, description="Reached only when a client names it.")
    slots: int | None = Field(
        None, ge=1, description="Requests served at once; default: llama.cpp's `parallel`."
    )
    queue: int = Field(100, ge=0, description="Requests that may wait beyond the free slots.")
    context_warn: float = Field(0.6, gt=0, le=1, description="Share of the window that warns.")
    context_refuse: float = Field(0.75, gt=0, le=1, description="Share above which it refuses.")
    timeouts: ModelTimeouts = Field(default_factory=ModelTimeouts)
    serves: list[Endpoint] | None = Field(
        None,
        description="OpenAI endpoints it serves (chat, completions, embeddings); default: its "
        "engine's (llama.cpp: chat and completions, or embeddings alone with --embeddings).",
    )

    @property
    def endpoints(self) -> frozenset[str]:
        """The endpoints it serves: ``serves``, else every one (its engine does not say)."""
        return frozenset(self.serves) if self.serves else ENDPOINTS

    @model_validator(mode="after")
    def _split_matches_gpus(self) -> ModelBase:
        if self.tensor_split is not None and self.gpus is not None:
            if len(self.tensor_split) != len(self.gpus):
                raise ValueError(
                    f"tensor_split has {len(self.tensor_split)} parts for {len(self.gpus)} GPUs"
                )
        return self

    @field_validator("aliases")
    @classmethod
    def _aliases_are_names(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not re.match(NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} must be letters, digits and ._:/@+-")
        return value


class LlamaCppModel(ModelBase):
    """A GGUF file served by ``llama-server``."""

    engine: Literal["llama.cpp"]
    weights: Path
    context: int | None = Field(None, ge=128, description="Context window (tokens), --ctx-size.")
    parallel: int = Field(1, ge=1, le=256, description="Parallel slots, --parallel.")
    args: list[Arg] = Field(default_factory=list, description="Extra llama-server arguments.")
    env: dict[str, Arg] = Field(default_factory=dict)

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
    def embedding_server(self) -> bool:
        """Run with --embeddings: llama-server then serves embeddings and nothing else."""
        flagged = any(a in ("--embedding", "--embeddings") for a in self.args)
        return flagged or (self.serves is not None and "embeddings" in self.serves)

    @property
    def endpoints(self) -> frozenset[str]:
        if self.serves:
            return frozenset(self.serves)
        return frozenset(("embeddings",) if self.embedding_server else ("chat", "completions"))


class CommandModel(ModelBase):
    """Any OpenAI-compatible server started from a command line containing ``{port}``."""

    engine: Literal["command"]
    command: list[Arg] = Field(min_length=1)
    env: dict[str, Arg] = Field(default_factory=dict)
    health_path: str = Field("/health", description="GET path that answers 200 once ready.")
    upstream_model: str | None = Field(None, description="Model name the server expects.")
    cwd: Path | None = None

    @field_validator("command")
    @classmethod
    def _has_port(cls, value: list[str]) -> list[str]:
        if not any("{port}" in part for part in value):
            raise ValueError("the command must contain {port}, where modelyard puts a free port")
        return value


class RemoteModel(ModelBase):
    """An OpenAI-compatible URL that is already running (a cloud API, a cluster)."""

    engine: Literal["remote"]
    url: str = Field(description="Base URL up to and including /v1.")
    api_key: str | None = None
    upstream_model: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL, e.g. https://api.example.com/v1")
        return value.rstrip("/")


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


class OllamaModel(ModelBase):
    """A model tag served by an ``ollama serve`` daemon of its own."""

    engine: Literal["ollama"]
    model: str = Field(description="The Ollama tag, e.g. mistral:7b-instruct-q5_K_M.")
    binary: str = Field("ollama", description="The ollama program: a name on PATH or a path.")
    keep_alive: Arg = Field("-1", description="Ollama's keep_alive; -1 = until modelyard stops it.")
    num_ctx: int | None = Field(None, ge=1, description="Context window (tokens), num_ctx.")
    env: dict[str, Arg] = Field(default_factory=dict)
    models_dir: Path | None = Field(None, description="OLLAMA_MODELS; default: Ollama's own.")

    @field_validator("env")
    @classmethod
    def _no_managed_env(cls, value: dict[str, str]) -> dict[str, str]:
        if "OLLAMA_HOST" in value:
            raise ValueError("OLLAMA_HOST is set by modelyard (each instance gets a free port)")
        return value


Model = Annotated[
    LlamaCppModel | CommandModel | RemoteModel | VllmModel | OllamaModel,
    Field(discriminator="engine"),
]
