"""What every model of the config file has, whatever its engine (pure).

``ModelBase`` is the base each engine's config class extends (in that engine's module,
``modelyard/engines/``): names, placement, slots, timeouts, the endpoints it serves, and
the facts routing, placement and the scheduler read of a model (its context window, its
slots, the GGUF file that tells its memory), which an engine overrides where it knows
better. With the small types every part of the schema uses.
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


Protocol = Literal["anthropic", "responses"]  # client APIs an engine may speak natively
Endpoint = Literal["chat", "completions", "embeddings", "speech", "transcriptions", "translations"]
ENDPOINTS: frozenset[str] = frozenset(
    ("chat", "completions", "embeddings", "speech", "transcriptions", "translations")
)
# What a model serves when neither ``serves`` nor its engine says: the text endpoints.
TEXT_ENDPOINTS: frozenset[str] = frozenset(("chat", "completions", "embeddings"))


class ModelBase(Strict):
    """What every model has, whatever its engine."""

    name: str = Field("", description="Filled from the key under `models:`.")
    aliases: list[str] = Field(default_factory=list)
    ttl: Seconds = Field(0.0, description="Idle time before the instance is stopped; 0 = never.")
    preload: bool = Field(
        False,
        description="Started when its node comes up (gateway or agent start, a node that "
        "answers again) and when its node leaves a mode that stopped it.",
    )
    pinned: bool = Field(False, description="Never stopped to make room for another model.")
    swap_group: str | None = Field(None, description="Members of a group never run together.")
    serial: str | None = Field(
        None,
        description="A GPU lease's name: models with the same one take turns, each request "
        "of one waiting (in arrival order) while another's generates.",
    )
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
        description="OpenAI endpoints it serves (chat, completions, embeddings, speech, "
        "transcriptions, translations); default: its "
        "engine's (llama.cpp: chat and completions, or embeddings alone with --embeddings).",
    )
    protocols: list[Protocol] | None = Field(
        None,
        description="The APIs besides Chat Completions its server speaks itself (anthropic: "
        "/v1/messages, responses: /v1/responses): requests in them are passed through as "
        "they came, others translated onto Chat Completions. Default: its engine's "
        "(llama.cpp and vLLM: both; others: none).",
    )
    listed_voices: list[str] = Field(
        default_factory=list,
        alias="voices",
        description="The voices of a speech server run as `command` or `remote` (for "
        "/v1/audio/voices, personas and Wyoming); the built-in speech worker knows its own.",
    )
    harmony: bool = Field(
        False,
        description="Speaks OpenAI's Harmony (gpt-oss): tags its engine leaves in a chat "
        "answer are cleaned out, the analysis channel going to `reasoning_content`.",
    )

    engine: str  # each engine's class narrows it to its own tag

    @property
    def endpoints(self) -> frozenset[str]:
        """The endpoints it serves: ``serves``, else every text one (its engine does not say)."""
        return frozenset(self.serves) if self.serves else TEXT_ENDPOINTS

    @property
    def window(self) -> int | None:
        """The context window (tokens) one request gets, where the config says it."""
        return None

    @property
    def engine_slots(self) -> int | None:
        """Requests its server runs at once by its own settings, when ``slots`` is unset."""
        return None

    @property
    def gguf(self) -> Path | None:
        """The GGUF file whose header tells its memory need, if it runs one."""
        return None

    @property
    def context_size(self) -> int | None:
        """The context (tokens) its server allocates in all, for the memory estimate."""
        return None

    @property
    def speaks(self) -> frozenset[str]:
        """The protocols its server speaks natively: ``protocols``, else its engine's."""
        return frozenset(self.protocols) if self.protocols is not None else self.engine_protocols

    @property
    def parts_on(self) -> tuple[str, ...]:
        """The nodes named to hold parts of it (a model across nodes); none, or ``auto``."""
        return ()

    @property
    def spans_auto(self) -> bool:
        """``span: auto``: the nodes that hold its parts are chosen at each start."""
        return False

    @property
    def engine_protocols(self) -> frozenset[str]:
        """The protocols besides Chat Completions its engine's server speaks."""
        return frozenset()

    @property
    def voices(self) -> tuple[str, ...]:
        """The voices it speaks with (a text-to-speech model), known without starting it:
        its engine's, or those the config lists (a speech server run as a command)."""
        return tuple(self.listed_voices)

    def unserved_hint(self, endpoint: str) -> str:
        """How to make it serve ``endpoint``, for the refusal that says it does not."""
        return f"add {endpoint} to models.{self.name}.serves"

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
