"""What each part of a config may be on its own but not together (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from modelyard.config.schema import (
    NAME_PATTERN,
    Access,
    ApiKey,
    Config,
    Model,
    ModelBase,
    ModeSpec,
    Node,
    Persona,
    Rule,
)

Where = tuple[str | int, ...]
_MODEL: TypeAdapter[Model] = TypeAdapter(Model)
_MEMBERS: TypeAdapter[list[str]] = TypeAdapter(list[str])
AUTO = "auto"  # as routing calls it (routing imports config, not the other way)


def _persona_problems(config: Config) -> list[tuple[Where, str]]:
    """A persona's name is its own (no model, alias, tier or ``auto``); ``use`` exists."""
    problems: list[tuple[Where, str]] = []
    for name, persona in config.personas.items():
        where: Where = ("personas", name)
        if not re.match(NAME_PATTERN, name):
            problems.append((where, "a persona name is letters, digits and ._:/@+-"))
        if name == AUTO:
            problems.append((where, "`auto` is the policy's name: a persona may not take it"))
        elif config.resolve(name) is not None:
            problems.append((where, f"{name!r} is already a model name or alias"))
        elif name in config.tiers:
            problems.append((where, f"{name!r} is already a tier"))
        if persona.use not in config.tiers and config.resolve(persona.use) is None:
            why = f"{persona.use!r} is neither a model, an alias nor a tier"
            if persona.use in config.personas:
                why += " (a persona may not use another persona)"
            problems.append(((*where, "use"), why))
        if persona.voice is not None:
            problems += _speaker_problems(
                config, (*where, "voice"), persona.voice.model, persona.voice.voice
            )
        if persona.ears is not None:
            problems += _serves(config, (*where, "ears"), persona.ears, "transcriptions")
    return problems


def _serves(config: Config, where: Where, name: str, endpoint: str) -> list[tuple[Where, str]]:
    """``name`` is a model (or an alias of one) that serves ``endpoint``."""
    model = config.resolve(name)
    if model is None:
        return [(where, f"{name!r} is not a model; models: {', '.join(config.models)}")]
    if endpoint not in model.endpoints:
        return [(where, f"{name!r} does not serve {endpoint}; {model.unserved_hint(endpoint)}")]
    return []


def _speaker_problems(
    config: Config, where: Where, name: str, voice: str | None
) -> list[tuple[Where, str]]:
    """``name`` serves speech and, where its voices are known, has ``voice``."""
    problems = _serves(config, where, name, "speech")
    model = config.resolve(name)
    if not problems and model is not None and voice is not None and model.voices:
        if voice not in model.voices:
            problems.append((where, f"{name!r} has no voice {voice!r}; it has: "
                             + ", ".join(model.voices)))  # fmt: skip
    return problems


def _wyoming_problems(config: Config) -> list[tuple[Where, str]]:
    spec = config.wyoming
    if spec is None:
        return []
    problems: list[tuple[Where, str]] = []
    if spec.tts is None and spec.stt is None:
        problems.append((("wyoming",), "the listener needs `tts`, `stt` or both"))
    if spec.tts is not None:
        problems += _speaker_problems(config, ("wyoming", "tts"), spec.tts, spec.voice)
    elif spec.voice is not None:
        problems.append((("wyoming", "voice"), "a voice needs `tts`, the model it belongs to"))
    if spec.stt is not None:
        problems += _serves(config, ("wyoming", "stt"), spec.stt, "transcriptions")
    if spec.key is not None and spec.key not in [k.name for k in config.access.keys]:
        problems.append((("wyoming", "key"), f"no access key is named {spec.key!r}"))
    return problems


def _policy_problems(config: Config) -> list[tuple[tuple[str | int, ...], str]]:
    """Tiers and rules may name only what exists; tiers may not loop."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for tier, members in config.tiers.items():
        if config.resolve(tier) is not None:
            problems.append((("tiers", tier), f"{tier!r} is already a model name or alias"))
        for i, member in enumerate(members):
            if member not in config.tiers and config.resolve(member) is None:
                problems.append((("tiers", tier, i), f"{member!r} is neither a model nor a tier"))
        try:
            config.tier_models(tier)
        except ValueError as exc:
            problems.append((("tiers", tier), str(exc)))
    for tier in config.tier_picks:
        if tier not in config.tiers:
            problems.append((("tier_picks", tier), f"{tier!r} is not a tier"))
    for i, rule in enumerate(config.policy):
        where: tuple[str | int, ...] = ("policy", i)
        if (
            rule.use is not None
            and rule.use not in config.tiers
            and config.resolve(rule.use) is None
        ):
            problems.append(((*where, "use"), f"{rule.use!r} is neither a model nor a tier"))
        for name in rule.forbid:
            if config.resolve(name) is None:
                problems.append(((*where, "forbid"), f"{name!r} is not a model"))
        conditions = [(where, rule)] + [
            ((*where, "any", j), c) for j, c in enumerate(rule.any or [])
        ]
        for at, cond in conditions:
            for node, mode in (cond.node_mode or {}).items():
                if node not in config.nodes:
                    problems.append(((*at, "node_mode"), f"node {node!r} does not exist"))
                elif mode not in config.nodes[node].modes:
                    modes = ", ".join(config.nodes[node].modes)
                    problems.append(
                        ((*at, "node_mode"), f"node {node} has no mode {mode!r} ({modes})")
                    )
            for key, named in (("reachable", cond.reachable), ("unreachable", cond.unreachable)):
                if named is not None and config.resolve(named) is None:
                    problems.append(((*at, key), f"{named!r} is not a model"))
    return problems


def cross_check(config: Config) -> list[tuple[tuple[str | int, ...], str]]:
    """What each part may be on its own but not together: names, nodes, GPU indices."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, str] = {}
    for name, model in config.models.items():
        if not re.match(NAME_PATTERN, name):
            problems.append((("models", name), "a model name is letters, digits and ._:/@+-"))
        for label in (name, *model.aliases):
            if label in seen and seen[label] != name:
                problems.append(
                    (("models", name), f"{label!r} names both {seen[label]!r} and {name!r}")
                )
            seen[label] = name
    locals_ = [n for n, node in config.nodes.items() if node.url is None]
    if len(locals_) > 1:
        problems.append(
            (
                ("nodes", locals_[1], "url"),
                f"nodes {', '.join(locals_)} have no url; only the gateway's own node may lack one",
            )
        )
    problems += _policy_problems(config)
    problems += _persona_problems(config)
    problems += _wyoming_problems(config)
    for pattern, target in config.model_patterns.items():
        named = target in config.tiers or target in config.personas or target == AUTO
        if not named and config.resolve(target) is None:
            why = f"{target!r} is not a model, alias, tier or persona"
            problems.append((("model_patterns", pattern), why))
    names = [k.name for k in config.access.keys]
    for i, key in enumerate(config.access.keys):
        if names.count(key.name) > 1:
            problems.append((("access", "keys", i, "name"), f"two keys are named {key.name!r}"))
        for j, allowed in enumerate(key.models or []):
            if (
                allowed not in config.tiers
                and allowed not in config.personas
                and allowed != "auto"
                and config.resolve(allowed) is None
            ):
                problems.append(
                    (("access", "keys", i, "models", j), f"{allowed!r} is not a model or tier")
                )
    for name, model in config.models.items():
        node_name = model.node or config.local_node
        if node_name is None:
            problems.append((("models", name), "names no node, and every node is remote: set node"))
            continue
        node = config.nodes.get(node_name)
        if node is None:
            problems.append(
                (
                    ("models", name, "node"),
                    f"{node_name!r} is not a node; nodes: {', '.join(config.nodes)}",
                )
            )
            continue
        for i, part in enumerate(model.parts_on):
            where = ("models", name, "span", i)
            if part not in config.nodes:
                problems.append(
                    (where, f"{part!r} is not a node; nodes: {', '.join(config.nodes)}")
                )
            elif part == node_name:
                why = f"{part!r} runs its llama-server: span lists the other nodes, each a part"
                problems.append((where, why))
            elif config.nodes[part].url is None and config.nodes[part].address is None:
                why = (
                    f"{part!r} is the gateway's own node: set nodes.{part}.address to where "
                    f"{node_name!r} reaches it, for its rpc-server to listen there"
                )
                problems.append((where, why))
        if isinstance(node.gpus, list) and model.gpus:
            known = {g.index for g in node.gpus}
            for i, index in enumerate(model.gpus):
                if index not in known:
                    have = ", ".join(str(k) for k in sorted(known)) or "none"
                    problems.append(
                        (
                            ("models", name, "gpus", i),
                            f"GPU {index} does not exist on node {node_name!r} (it has {have})",
                        )
                    )
    return problems


class _Unreadable(Exception):
    """A part others refer to whose names cannot be read: nothing can be checked across."""


def cross_check_parts(data: Mapping[str, Any]) -> list[tuple[Where, str]]:
    """``cross_check`` on the parts of ``data`` that validate, when the whole does not.

    So that one run reports every error: a rule naming an unknown model is reported beside a
    bad type elsewhere. Each model, node, tier, rule and key that does not validate on its
    own is replaced by a stand-in that keeps only the names others refer to (a reference to
    it is not an error), and nothing located inside it is reported (its own error is).
    """
    broken: list[Where] = []
    try:
        config = Config.model_construct(
            models=_models(data.get("models", {}), broken),
            tiers=_tiers(data.get("tiers", {}), broken),
            policy=_rules(data.get("policy", []), broken),
            access=Access.model_construct(keys=_keys(data.get("access", {}), broken)),
            personas=_personas(data.get("personas", {}), broken),
        )
        if "nodes" in data:  # else the default nodes, as Config has them
            config = config.model_copy(update={"nodes": _nodes(data["nodes"], broken)})
    except _Unreadable:
        return []
    return [
        (where, message)
        for where, message in cross_check(config)
        if not any(where[: len(part)] == part for part in broken)
    ]


def _models(raw: Any, broken: list[Where]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _Unreadable
    models: dict[str, Any] = {}
    for name, spec in raw.items():
        try:  # as Config does it: the name comes from the key
            models[name] = _MODEL.validate_python(
                {**spec, "name": name} if isinstance(spec, Mapping) else spec
            )
        except ValidationError:
            aliases = spec.get("aliases", []) if isinstance(spec, Mapping) else []
            if not isinstance(aliases, list):
                raise _Unreadable from None
            broken.append(("models", name))
            # A stand-in with its name and aliases, for the checks that read only those.
            models[name] = ModelBase.model_construct(
                engine="", name=name, aliases=[str(a) for a in aliases]
            )
    return models


def _nodes(raw: Any, broken: list[Where]) -> dict[str, Node]:
    if not isinstance(raw, Mapping):
        raise _Unreadable
    nodes: dict[str, Node] = {}
    for name, spec in raw.items():
        try:
            nodes[name] = Node.model_validate(spec)
        except ValidationError:
            modes = spec.get("modes", {}) if isinstance(spec, Mapping) else None
            if not isinstance(modes, Mapping):
                raise _Unreadable from None  # rules may name its modes
            broken.append(("nodes", name))
            url = spec.get("url")
            # Any url, even a wrong one, says it is not the gateway's own node.
            node = Node.model_construct(url=None if url is None else str(url))
            if modes:  # its modes by name, whatever their kinds; none given: the default ones
                node = node.model_copy(
                    update={"modes": {str(m): ModeSpec(kind="open") for m in modes}}
                )
            nodes[name] = node
    return nodes


def _tiers(raw: Any, broken: list[Where]) -> dict[str, list[str]]:
    if not isinstance(raw, Mapping):
        raise _Unreadable
    tiers: dict[str, list[str]] = {}
    for name, members in raw.items():
        try:
            tiers[name] = _MEMBERS.validate_python(members)
        except ValidationError:
            broken.append(("tiers", name))
            tiers[name] = []
    return tiers


def _personas(raw: Any, broken: list[Where]) -> dict[str, Persona]:
    personas: dict[str, Persona] = {}
    for name, spec in (raw if isinstance(raw, Mapping) else {}).items():
        try:
            personas[str(name)] = Persona.model_validate(spec)
        except ValidationError:
            broken.append(("personas", name))
            personas[str(name)] = Persona.model_construct(use="")  # its own error is reported
    return personas


def _rules(raw: Any, broken: list[Where]) -> list[Rule]:
    rules: list[Rule] = []
    for i, spec in enumerate(raw if isinstance(raw, list) else []):
        try:
            rules.append(Rule.model_validate(spec))
        except ValidationError:
            broken.append(("policy", i))
            rules.append(Rule.model_construct(name=""))  # names nothing: finds nothing
    return rules


def _keys(raw: Any, broken: list[Where]) -> list[ApiKey]:
    specs = raw.get("keys", []) if isinstance(raw, Mapping) else []
    keys: list[ApiKey] = []
    for i, spec in enumerate(specs if isinstance(specs, list) else []):
        try:
            keys.append(ApiKey.model_validate(spec))
        except ValidationError:
            broken.append(("access", "keys", i))
            name = spec.get("name") if isinstance(spec, Mapping) else None
            # Its name still counts among the names given twice; no name, one of its own.
            keys.append(ApiKey.model_construct(name=name if isinstance(name, str) else f"\0{i}"))
    return keys
