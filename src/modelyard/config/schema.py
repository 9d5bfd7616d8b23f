"""The config's schema: every key, its type, its default and what it means (pure)."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from modelyard.config.node_spec import (
    GpuSpec as GpuSpec,
)
from modelyard.config.node_spec import (
    ModeKind as ModeKind,
)
from modelyard.config.node_spec import (
    ModeSpec as ModeSpec,
)
from modelyard.config.node_spec import (
    Node as Node,
)
from modelyard.config.node_spec import is_loopback

# Re-exported: the schema is the one place every key of the file is found from.
from modelyard.engines.catalog import Model as Model
from modelyard.engines.llamacpp import LlamaCppSettings
from modelyard.model_spec import (
    ENDPOINTS as ENDPOINTS,
)
from modelyard.model_spec import (
    LOCAL_NODE as LOCAL_NODE,
)
from modelyard.model_spec import (
    NAME_PATTERN as NAME_PATTERN,
)
from modelyard.model_spec import (
    Arg as Arg,
)
from modelyard.model_spec import (
    Bytes as Bytes,
)
from modelyard.model_spec import (
    Endpoint as Endpoint,
)
from modelyard.model_spec import (
    ModelBase as ModelBase,
)
from modelyard.model_spec import (
    ModelTimeouts as ModelTimeouts,
)
from modelyard.model_spec import (
    Seconds as Seconds,
)
from modelyard.model_spec import (
    Strict as Strict,
)
from modelyard.model_spec import (
    Timeouts as Timeouts,
)


class Engines(Strict):
    llama_cpp: LlamaCppSettings = Field(default_factory=LlamaCppSettings, alias="llama.cpp")


class Scheduler(Strict):
    start_timeout: Seconds = 120.0
    drain_timeout: Seconds = 30.0
    stop_grace: Seconds = 10.0
    max_swap_delay: Seconds = Field(
        5.0,
        description="How long the loaded member of a swap group keeps taking new requests "
        "while another member waits; bounds the wait, cuts the swaps under mixed traffic.",
    )
    restart_backoff: Seconds = 1.0
    restart_backoff_max: Seconds = 60.0
    max_restarts: int = Field(5, ge=0, description="Failed starts in a row before giving up.")


Pick = Literal["first", "least_busy", "round_robin"]  # how a tier picks among its members
PICKS = ("first", "least_busy", "round_robin")


def _tier_block(spec: Any) -> bool:
    """Is ``spec`` a well-formed ``{members: [...], pick: ...}`` tier block?"""
    return (
        isinstance(spec, Mapping)
        and set(spec) <= {"members", "pick"}
        and isinstance(spec.get("members"), list)
        and spec.get("pick", "first") in PICKS
    )


class Placement(Strict):
    overhead: Bytes = Field(
        512 * 1024**2, description="Added to each GPU a model uses (compute buffers, CUDA)."
    )
    slow_link_width: int = Field(8, ge=1, description="PCIe links narrower than this are slow.")
    moe_on_slow_link: Literal["refuse", "warn"] = "refuse"
    min_link_gbps: float = Field(
        1.0, gt=0, description="A part of a model across nodes on a slower link is warned of."
    )


class Condition(Strict):
    """What a request must show for a rule to hold; every key given must hold."""

    header: dict[str, str] | None = None  # names and values compared case-insensitively
    model: list[str] | None = None  # the name the client asked for
    tag: str | None = None  # regex on the last user message; removed before forwarding
    last_message: str | None = None  # regex on the last user message
    tokens_over: int | None = Field(None, ge=0)
    tokens_under: int | None = Field(None, ge=0)
    tools: bool | None = None
    images: bool | None = None
    node_mode: dict[str, str] | None = None  # {node: mode}: the node is in that mode now
    reachable: str | None = None  # a model whose node answers (and, remote, whose URL does)
    unreachable: str | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("tag", "last_message")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class Rule(Condition):
    """One step of the policy: when its conditions hold, what to do."""

    name: str
    any: list[Condition] | None = Field(None, description="At least one of these holds.")
    use: str | None = Field(None, description="A tier or model: routing stops here.")
    force: bool = Field(False, description="The request may enter gated nodes.")
    forbid: list[str] = Field(default_factory=list, description="Models this request may not use.")

    @model_validator(mode="after")
    def _does_something(self) -> Rule:
        if self.use is None and not self.forbid and not self.force:
            raise ValueError("a rule needs `use`, `forbid` or `force`")
        return self


def _rate(value: Any) -> Any:
    """``60/min``, ``5/s``, ``1000/h`` → requests per second."""
    if value is None or isinstance(value, int | float):
        return value
    count, sep, unit = str(value).partition("/")
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}.get(unit.strip())
    if not sep or per is None or not count.strip().isdigit():
        raise ValueError(f"{value!r}: expected a rate such as 60/min, 5/s or 1000/h")
    return int(count) / per


Scope = Literal["user", "admin"]


def _user_scope() -> list[Scope]:
    return ["user"]


class ApiKey(Strict):
    """A key that may use the gateway; only its SHA-256 is kept."""

    name: str
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Hex digest.")
    key: str | None = Field(None, description="The key itself, from ${ENV}; hashed at load.")
    scopes: list[Scope] = Field(default_factory=_user_scope)
    models: list[str] | None = Field(None, description="Names, aliases or tiers it may use.")
    rate: Annotated[float | None, BeforeValidator(_rate)] = Field(
        None, description="Requests per second it may make, written 60/min."
    )
    priority: int = Field(
        0,
        description="Waiting requests with a higher priority are served first (interactive "
        "over batch); equal ones in arrival order.",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of `sha256` (from `modelyard key NAME`) or `key`")
        if self.key is not None and not self.key.strip():  # no client can send it
            raise ValueError("`key` is empty (an empty ${VAR}?): give the key itself")
        return self

    def digest(self) -> str:
        return self.sha256 or hashlib.sha256((self.key or "").encode()).hexdigest()


class Access(Strict):
    keys: list[ApiKey] = Field(default_factory=list)
    allow_open_lan: bool = Field(
        False, description="Serve a non-loopback address with no keys (an explicit choice)."
    )
    max_body: Bytes = Field(16 * 1024**2, description="Largest request body accepted.")
    body_timeout: Seconds = Field(
        30.0, gt=0, description="Longest silence while a request's body is read; then 408."
    )
    max_headers: int = Field(
        100, ge=1, description="Most headers one request may send; more get 431."
    )
    max_header_bytes: Bytes = Field(
        64 * 1024,
        ge=1024,
        description="Largest size of a request's header lines together; larger, or a head "
        "(request line and headers) still unfinished past this size, gets 431.",
    )
    header_timeout: Seconds = Field(
        10.0,
        gt=0,
        description="How long a request's headers may take to arrive, from the connection "
        "(its first request) or the request's first byte; then 408 and the connection closes.",
    )


class TelemetrySpec(Strict):
    """The request log's and the decisions' retention (docs/config.md, "telemetry")."""

    keep_requests: int = Field(100_000, ge=100, description="Newest request rows kept.")
    keep_decisions: int = Field(100_000, ge=100, description="Newest routing decisions kept.")
    keep_prompts: bool = Field(
        False,
        description="Keep each request's last user message in its decision, so that `route "
        "replay` can judge `last_message` and `tag` conditions; off: no prompt text is stored.",
    )


class PersonaParams(Strict):
    """Sampling defaults a persona sets where the client's request does not."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class PersonaVoice(Strict):
    """How a persona speaks: a text-to-speech model and one of its voices."""

    model: str = Field(description="A model that serves speech.")
    voice: str | None = Field(None, description="One of its voices; default: its first.")


def _voice_shorthand(value: Any) -> Any:
    return {"model": value} if isinstance(value, str) else value


class Persona(Strict):
    """A name for chat: a model or tier, a system prompt, sampling defaults, a voice, ears."""

    use: str = Field(description="The model, alias or tier that serves it.")
    system: str | None = Field(None, description="Its system prompt, before the client's.")
    params: PersonaParams = Field(default_factory=PersonaParams)
    description: str | None = None
    voice: Annotated[PersonaVoice | None, BeforeValidator(_voice_shorthand)] = Field(
        None, description="Its voice for /speak and /listen: `MODEL` or {model, voice}."
    )
    ears: str | None = Field(None, description="The speech-to-text model /listen uses.")


class Wyoming(Strict):
    """A listener for Home Assistant's Wyoming protocol, serving speech models."""

    listen: str = Field("127.0.0.1:10300", description="HOST:PORT it listens on (TCP).")
    tts: str | None = Field(None, description="The model that speaks (serves speech).")
    voice: str | None = Field(None, description="Its voice when the client names none.")
    stt: str | None = Field(None, description="The model that listens (serves transcriptions).")
    key: str | None = Field(
        None,
        description="An access key's name: its models and priority apply (not its rate: "
        "the listener's requests are made inside the gateway).",
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        split_listen(str(value))
        return value


class Config(Strict):
    """The whole file."""

    listen: str = "127.0.0.1:8000"
    state_dir: Path = Path(".modelyard")
    engines: Engines = Field(default_factory=Engines)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    placement: Placement = Field(default_factory=Placement)
    nodes: dict[str, Node] = Field(default_factory=lambda: {LOCAL_NODE: Node()})
    models: dict[str, Model] = Field(default_factory=dict)
    access: Access = Field(default_factory=Access)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    tiers: dict[str, list[str]] = Field(default_factory=dict)
    tier_picks: dict[str, Pick] = Field(
        default_factory=dict,
        description="How a tier picks among its healthy members: `first` (in order), "
        "`least_busy` (live slots, queue, GPU use) or `round_robin`. Also written in the "
        "tier: `NAME: {members: [...], pick: least_busy}`.",
    )
    policy: list[Rule] = Field(default_factory=list)
    personas: dict[str, Persona] = Field(default_factory=dict)
    wyoming: Wyoming | None = None
    model_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Names clients pick themselves, by glob pattern (`claude-*-haiku-*`), "
        "mapped to a model, alias, tier or persona; the first pattern that matches wins.",
    )
    source: Path | None = Field(None, exclude=True)
    warnings: list[str] = Field(default_factory=list, exclude=True)  # filled by the loader

    @model_validator(mode="before")
    @classmethod
    def _tier_blocks(cls, value: Any) -> Any:
        """``tiers.NAME: {members, pick}`` → its list in ``tiers``, its pick in
        ``tier_picks`` (the list alone means ``pick: first``). A block that is not one is
        left for ``_tiers`` to report where it is."""
        if not isinstance(value, Mapping) or not isinstance(value.get("tiers"), Mapping):
            return value
        tiers, picks = {}, dict(value.get("tier_picks") or {})
        for name, spec in value["tiers"].items():
            if _tier_block(spec):
                tiers[name] = spec["members"]
                if "pick" in spec:
                    picks[name] = spec["pick"]
            else:
                tiers[name] = spec
        return {**value, "tiers": tiers, "tier_picks": picks}

    @field_validator("tiers", mode="before")
    @classmethod
    def _tiers(cls, value: Any) -> Any:
        bad = [
            f"{name}: {dict(spec)!r}"
            for name, spec in (value.items() if isinstance(value, Mapping) else ())
            if isinstance(spec, Mapping)
        ]
        if bad:
            raise ValueError(
                f"a tier is a list of models, or {{members: [...], pick: {'|'.join(PICKS)}}}; "
                f"not so: {'; '.join(bad)}"
            )
        return value

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        split_listen(str(value))
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _names_from_keys(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                key: ({**spec, "name": key} if isinstance(spec, Mapping) else spec)
                for key, spec in value.items()
            }
        return value

    @property
    def local_node(self) -> str | None:
        """The gateway's own node: the one without an agent url."""
        return next((n for n, node in self.nodes.items() if node.url is None), None)

    @property
    def agent_nodes(self) -> list[str]:
        """The nodes that run an agent: those with an url (the gateway's own has none)."""
        return [n for n, node in self.nodes.items() if node.url is not None]

    def open_without_keys(self) -> str | None:
        """What is wrong when ``listen`` reaches the network with no API keys and no
        ``access.allow_open_lan`` (``serve`` refuses to start so), else None."""
        host, port = split_listen(self.listen)
        if self.access.keys or self.access.allow_open_lan or is_loopback(host):
            return None
        return (
            f"{host}:{port} with no API keys: anyone on the network could use it. Add keys "
            "under access.keys (modelyard key NAME), listen on 127.0.0.1, or set "
            "access.allow_open_lan: true"
        )

    def agent_state_dir(self, node: str) -> Path:
        """Where the agent of ``node`` keeps its state: its ``state_dir``, else one of its
        own inside the gateway's."""
        return self.nodes[node].state_dir or self.state_dir / f"agent-{node}"

    def node_of(self, model: str) -> str:
        node = self.models[model].node or self.local_node
        assert node is not None, "validated: every model has a node"
        return node

    def tier_models(self, tier: str, seen: tuple[str, ...] = ()) -> list[str]:
        """The models of ``tier`` in order, nested tiers flattened; raises on a loop."""
        if tier in seen:
            raise ValueError(f"tiers loop: {' -> '.join((*seen, tier))}")
        out: list[str] = []
        for member in self.tiers.get(tier, []):
            names = (
                self.tier_models(member, (*seen, tier))
                if member in self.tiers
                else [m.name for m in [self.resolve(member)] if m is not None]
            )
            out += [n for n in names if n not in out]
        return out

    def pick(self, tier: str) -> Pick:
        """How ``tier`` picks among its members."""
        return self.tier_picks.get(tier, "first")

    def resolve(self, name: str) -> Model | None:
        """The model a client means by ``name`` (its name or an alias)."""
        if name in self.models:
            return self.models[name]
        for model in self.models.values():
            if name in model.aliases:
                return model
        return None

    def mapped(self, name: str) -> tuple[str, str | None]:
        """The name a client's ``name`` stands for, and the pattern that mapped it (None:
        a name of the config itself, or no pattern matched)."""
        if name in self.models or name in self.tiers or name in self.personas:
            return name, None
        if self.resolve(name) is not None or name == "auto":
            return name, None
        for pattern, target in self.model_patterns.items():
            if fnmatch.fnmatchcase(name, pattern):
                return target, pattern
        return name, None

    def names(self) -> list[str]:
        """Every name a client may ask for a model by: the models', then their aliases."""
        return [*self.models, *(a for m in self.models.values() for a in m.aliases)]

    def wait_limit(self, model: str) -> float:
        """How long a request may wait for ``model``: a swap away, then a cold start."""
        s = self.scheduler
        start = self.models[model].start_timeout or s.start_timeout
        return s.max_swap_delay + s.drain_timeout + s.stop_grace + start

    def leases_of(self, name: str) -> tuple[str, ...]:
        """The GPU leases ``name`` takes turns on: its ``serial`` name, and ``NODE/gpuN``
        for each serial GPU of its node it may run on (all of them when ``gpus`` is unset).
        """
        model = self.models[name]
        found = [model.serial] if model.serial else []
        node = self.nodes.get(self.node_of(name))
        if node is not None and node.serial_gpus and model.gpus != []:
            used = node.serial_gpus if model.gpus is None else model.gpus
            node_name = self.node_of(name)
            found += [f"{node_name}/gpu{i}" for i in sorted(set(used) & set(node.serial_gpus))]
        return tuple(found)

    def group_of(self, name: str) -> list[str]:
        """The models that may not run beside ``name``: its swap group, itself excluded."""
        group = self.models[name].swap_group
        if group is None:
            return []
        return [n for n, m in self.models.items() if m.swap_group == group and n != name]


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port); raises ValueError with what is expected."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: expected HOST:PORT, e.g. 0.0.0.0:8000")
    return (host.strip("[]") or "0.0.0.0"), int(port)
