"""Routing: request features + a snapshot of the cluster → a Decision (pure).

The policy is the config's ordered ``policy`` rules. A rule whose conditions hold acts:
``forbid`` removes models from this request's reach and evaluation goes on; ``force`` lets
the request into gated nodes; ``use`` names the target (a tier or a model) and ends the
evaluation. ``use`` rules decide for ``auto``; a client that names a model, an alias or a
tier gets what it named ("no guessing"), unless a holding ``use`` rule names that very
name in a ``model`` condition (S2's ``model: big`` force signal). ``forbid`` and ``force``
apply to every request. The target's models, in order, are the candidates; each one is kept or
turned down with a reason (forbidden, manual-only, node unreachable, drained or gated,
failed), and the first kept one serves. Every step lands in the Decision's trail.

A chat request that names a persona is routed as if it named the persona's ``use``; the
Decision carries the persona's edits (its system prompt, its sampling defaults) for the
front-end to apply, as it carries the prompt tags to strip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from modelyard.balance import Load, pick
from modelyard.config import Condition, Config, Rule
from modelyard.config.schema import Persona

AUTO = "auto"
FORBIDDEN = "forbidden by a rule"
CONTEXT = "context too long"
UNSERVED = "does not serve"
HEADER_VALUE_KEPT = 256  # characters of a routing header's value kept in a decision
MANUAL_ONLY = "manual-only: reached only when named"
_BY_POLICY = (FORBIDDEN, MANUAL_ONLY)
TOKEN_METHOD = "characters / 3, rounded up, + 4 per message (errs high for English and code)"


@dataclass(frozen=True)
class Features:
    """What routing reads of a request."""

    model: str
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    last_user: str = ""
    tokens: int = 0
    tools: bool = False
    images: bool = False
    max_tokens: int = 0  # what the client asked to generate, if it said
    endpoint: str = "chat"  # chat, completions or embeddings
    header_count: int = 0  # all the request's headers, kept or not: a bounded summary
    header_bytes: int = 0

    @property
    def need(self) -> int:
        """Tokens the request may take in a context window: its prompt and its answer."""
        return self.tokens + self.max_tokens

    def as_dict(self, text: bool = True) -> dict[str, Any]:
        """What a replay needs; credentials are never kept, the prompt only if ``text``.

        ``headers`` holds only what routing read (names in a policy rule); the rest are
        counted, not kept.
        """
        headers = {
            k: "(credential, not kept)" if k in _SECRET_HEADERS else v[:HEADER_VALUE_KEPT]
            for k, v in self.headers.items()
        }
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "headers": headers,
            "header_count": self.header_count,
            "header_bytes": self.header_bytes,
            "last_user": self.last_user[:65536] if text else "",
            "text_kept": text,
            "tokens": self.tokens,
            "tools": self.tools,
            "images": self.images,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Features:
        return cls(
            str(data["model"]),
            dict(data.get("headers") or {}),
            str(data.get("last_user", "")),
            int(data.get("tokens", 0)),
            bool(data.get("tools")),
            bool(data.get("images")),
            int(data.get("max_tokens", 0)),
            str(data.get("endpoint", "chat")),
        )


_SECRET_HEADERS = {"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"}


@dataclass(frozen=True)
class Cluster:
    """What routing reads of the cluster at this moment."""

    modes: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # node → (mode, kind)
    reachable: Mapping[str, bool] = field(default_factory=dict)  # node → answers
    failed: Mapping[str, str] = field(default_factory=dict)  # model → why it cannot start now
    remote_down: Mapping[str, str] = field(default_factory=dict)  # remote model → why
    loads: Mapping[str, Load] = field(default_factory=dict)  # members of least_busy tiers
    turns: Mapping[str, int] = field(default_factory=dict)  # round_robin tier → routed so far


@dataclass(frozen=True)
class Step:
    """One line of the trail: a rule evaluated or a candidate considered."""

    kind: str  # "rule", "candidate" or "pick" (how a tier ordered its members)
    name: str
    ok: bool
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "ok": self.ok, "why": self.why}


@dataclass(frozen=True)
class Decision:
    """Where a request goes, why, and everything turned down on the way."""

    asked: str
    features: Features
    target: str | None
    rule: str | None
    candidates: tuple[str, ...]
    forced: bool
    strip: tuple[str, ...]  # regexes of prompt tags to remove before forwarding
    tokens: int
    trail: tuple[Step, ...]
    persona: str | None = None  # the persona asked for, whose edits follow
    system: str | None = None  # its system prompt: first, before the client's
    defaults: tuple[tuple[str, Any], ...] = ()  # its sampling defaults, where the body has none

    @property
    def model(self) -> str | None:
        return self.candidates[0] if self.candidates else None

    @property
    def edits(self) -> bool:
        """Does the request change on its way (a persona's prompt and defaults, prompt tags
        stripped)? Without edits it may go upstream as it came."""
        return self.persona is not None or bool(self.strip)

    def degraded(self) -> str | None:
        """The first candidate turned down for its health (not by policy), if any."""
        for step in self.trail:
            if (
                step.kind == "candidate"
                and not step.ok
                and step.why not in _BY_POLICY
                and not step.why.startswith(UNSERVED)  # the request's own kind, not health
            ):
                return f"{step.name}: {step.why}"
        return None

    def summary(self) -> str:
        turned_down = [f"{s.name}: {s.why}" for s in self.trail if s.kind == "candidate"]
        head = f"rule {self.rule}" if self.rule else f"asked for {self.asked}"
        return f"{head} → {self.target}; " + "; ".join(turned_down)

    def as_dict(self, text: bool = True) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "features": self.features.as_dict(text),
            "target": self.target,
            "rule": self.rule,
            "model": self.model,
            "candidates": list(self.candidates),
            "forced": self.forced,
            "tokens": self.tokens,
            "token_method": TOKEN_METHOD,
            "trail": [s.as_dict() for s in self.trail],
            "persona": self.persona,
        }


def header_names(config: Config) -> frozenset[str]:
    """The header names the policy reads (lower-cased): all a decision keeps of headers."""
    return frozenset(
        name.lower()
        for rule in config.policy
        for c in [rule, *(rule.any or [])]
        for name in (c.header or {})
    )


def window(config: Config, name: str) -> int | None:
    """The context window one request gets on ``name``, where the config says it."""
    return config.models[name].window


def context_use(config: Config, name: str, req: Features) -> float | None:
    """Share of ``name``'s window the request may take, if the window is known."""
    size = window(config, name)
    return req.need / size if size else None


def persona_defaults(persona: Persona) -> tuple[tuple[str, Any], ...]:
    """The sampling defaults ``persona`` sets, in a fixed order."""
    return tuple((k, v) for k, v in persona.params.model_dump().items() if v is not None)


def route(config: Config, req: Features, cluster: Cluster) -> Decision:
    """The Decision for ``req`` now."""
    target, pattern = config.mapped(req.model)
    if pattern is None:
        return _persona_or_model(config, req, cluster)
    # A name the client picked itself (claude-3-5-haiku-...): routed as the one it maps to.
    inner = _persona_or_model(config, replace(req, model=target), cluster)
    step = Step("pattern", pattern, True, f"{req.model} matches {pattern}: use {target}")
    return replace(inner, asked=req.model, features=replace(inner.features, model=req.model),
                   trail=(step, *inner.trail))  # fmt: skip


def _persona_or_model(config: Config, req: Features, cluster: Cluster) -> Decision:
    persona = config.personas.get(req.model)
    if persona is None:
        return _route(config, req, cluster)
    name = req.model
    if req.endpoint != "chat":
        why = f"a persona serves chat only, not {req.endpoint}; ask for {persona.use}"
        return Decision(name, req, None, None, (), False, (), req.tokens,
                        (Step("persona", name, False, why),))  # fmt: skip
    defaults = persona_defaults(persona)
    # Routed as if it named ``use``; its max_tokens default counts where the client's is unset.
    wanted = dict(defaults).get("max_tokens", 0)
    routed = replace(req, model=persona.use, max_tokens=req.max_tokens or wanted)
    inner = _route(config, routed, cluster)
    said = ["system prompt first" if persona.system else "no system prompt"]
    said += [f"{k}={v} where unset" for k, v in defaults]
    step = Step("persona", name, True, f"use {persona.use}; " + ", ".join(said))
    return replace(
        inner,
        asked=name,
        features=replace(req, max_tokens=routed.max_tokens),
        trail=(step, *inner.trail),
        persona=name,
        system=persona.system,
        defaults=defaults,
    )


def _route(config: Config, req: Features, cluster: Cluster) -> Decision:
    trail: list[Step] = []
    forbidden: set[str] = set()
    forced = False
    explicit = config.resolve(req.model)
    target: str | None = None
    rule_name: str | None = None
    for rule in config.policy:
        why = _holds(rule, req, cluster, config)
        if why is None:
            trail.append(Step("rule", rule.name, False, "conditions do not hold"))
            continue
        acts = []
        if rule.forbid:
            forbidden |= {m.name for m in map(config.resolve, rule.forbid) if m is not None}
            acts.append(f"forbids {', '.join(rule.forbid)}")
        if rule.force:
            forced = True
            acts.append("forces gated nodes")
        if rule.use is not None and (req.model == AUTO or _names(rule, req.model)):
            target, rule_name = rule.use, rule.name
            trail.append(Step("rule", rule.name, True, f"{why}: use {rule.use}" + _and(acts)))
            break
        skipped = f" (use skipped: the client named {req.model})" if rule.use else ""
        trail.append(Step("rule", rule.name, True, why + _and(acts) + skipped))
    if target is None:
        if req.model in config.tiers:
            target = req.model
        elif explicit is not None:
            target = explicit.name
    # Prompt tags are routing instructions, never meant for the model: every configured tag
    # that matches is removed, whether or not its rule held.
    strip = [
        c.tag
        for rule in config.policy
        for c in [rule, *(rule.any or [])]
        if c.tag and _tag(c.tag, req)
    ]
    candidates: list[str] = []
    if target is not None:
        auto_picked = explicit is None or target != explicit.name
        for name in config.tier_models(target) if target in config.tiers else [target]:
            why_not = _turned_down(name, config, cluster, forbidden, forced, auto_picked)
            if why_not is None and req.endpoint not in config.models[name].endpoints:
                why_not = _unserved(name, config, req.endpoint)
            use = context_use(config, name, req)
            if why_not is None and use is not None and use > config.models[name].context_refuse:
                why_not = (
                    f"{CONTEXT}: about {req.need} tokens is {use:.0%} of its "
                    f"{window(config, name)}-token window (refused above "
                    f"{config.models[name].context_refuse:.0%})"
                )
            trail.append(Step("candidate", name, why_not is None, why_not or "allowed"))
            if why_not is None:
                candidates.append(name)
        if target in config.tiers:
            how = config.pick(target)
            candidates, why = pick(how, candidates, cluster.loads, cluster.turns.get(target, 0))
            if why is not None:
                trail.append(Step("pick", target, True, why))
    return Decision(
        req.model,
        req,
        target,
        rule_name,
        tuple(candidates),
        forced,
        tuple(dict.fromkeys(strip)),
        req.tokens,
        tuple(trail),
    )


def _unserved(name: str, config: Config, endpoint: str) -> str:
    model = config.models[name]
    how = model.unserved_hint(endpoint)
    return f"{UNSERVED} {endpoint}: it serves {', '.join(sorted(model.endpoints))}; {how}"


def _names(rule: Rule, asked: str) -> bool:
    """Does ``rule`` speak of the name the client asked for (a ``model`` condition)?"""
    return any(c.model and asked in c.model for c in [rule, *(rule.any or [])])


def _and(acts: list[str]) -> str:
    return ("; " + ", ".join(acts)) if acts else ""


def _turned_down(
    name: str, config: Config, cluster: Cluster, forbidden: set[str], forced: bool, auto: bool
) -> str | None:
    model = config.models[name]
    node = config.node_of(name)
    if name in forbidden:
        return FORBIDDEN
    if auto and model.manual_only:
        return MANUAL_ONLY
    for where in (node, *model.parts_on):  # its own node, then its parts'
        of = "node" if where == node else "its part's node"
        if not cluster.reachable.get(where, True):
            return f"{of} {where} is unreachable"
        mode, kind = cluster.modes.get(where, ("open", "open"))
        if kind == "drained":
            return f"{of} {where} is in mode {mode} (drained)"
        if kind == "gated" and not forced:
            return f"{of} {where} is in mode {mode} (gated) and nothing forces it"
    if name in cluster.remote_down:
        return f"remote down: {cluster.remote_down[name]}"
    if name in cluster.failed:
        return cluster.failed[name]
    return None


def _holds(rule: Condition, req: Features, cluster: Cluster, config: Config) -> str | None:
    """Why ``rule`` (with its ``any`` list) holds for ``req``, or None if it does not."""
    own = _condition(rule, req, cluster, config)
    if own is None:
        return None
    alternatives = getattr(rule, "any", None)
    if alternatives:
        for alt in alternatives:
            why = _condition(alt, req, cluster, config)
            if why is not None:
                return "; ".join(w for w in (own, why) if w)
        return None
    return own or "always"


def _condition(c: Condition, req: Features, cluster: Cluster, config: Config) -> str | None:
    """Why every key of ``c`` holds ("" when it has none), or None."""
    why: list[str] = []
    if c.header is not None:
        for name, value in c.header.items():
            if req.headers.get(name.lower(), "").lower() != value.lower():
                return None
            why.append(f"header {name}: {value}")
    if c.model is not None:
        if req.model not in c.model:
            return None
        why.append(f"model {req.model}")
    if c.tag is not None:
        if not _tag(c.tag, req):
            return None
        why.append(f"prompt tag {c.tag}")
    if c.last_message is not None:
        if not re.search(c.last_message, req.last_user):
            return None
        why.append(f"last message matches {c.last_message}")
    if c.tokens_over is not None:
        if req.tokens < c.tokens_over:
            return None
        why.append(f"about {req.tokens} tokens >= {c.tokens_over}")
    if c.tokens_under is not None:
        if req.tokens >= c.tokens_under:
            return None
        why.append(f"about {req.tokens} tokens < {c.tokens_under}")
    if c.tools is not None:
        if req.tools != c.tools:
            return None
        why.append("tools given" if c.tools else "no tools")
    if c.images is not None:
        if req.images != c.images:
            return None
        why.append("images given" if c.images else "no images")
    for node, mode in (c.node_mode or {}).items():
        if cluster.modes.get(node, ("", ""))[0] != mode:
            return None
        why.append(f"node {node} in mode {mode}")
    for named, want in ((c.reachable, True), (c.unreachable, False)):
        if named is None:
            continue
        model = config.resolve(named)
        assert model is not None, "checked with the config"
        where = config.node_of(model.name)
        up = cluster.reachable.get(where, True) and model.name not in cluster.remote_down
        if up != want:
            return None
        why.append(f"{named} {'reachable' if want else 'unreachable'}")
    return "; ".join(why)


def _tag(pattern: str, req: Features) -> bool:
    return re.search(pattern, req.last_user) is not None
