"""What each part of a config may be on its own but not together (pure)."""

from __future__ import annotations

import re

from modelyard.config.schema import NAME_PATTERN, Config


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
    names = [k.name for k in config.access.keys]
    for i, key in enumerate(config.access.keys):
        if names.count(key.name) > 1:
            problems.append((("access", "keys", i, "name"), f"two keys are named {key.name!r}"))
        for j, allowed in enumerate(key.models or []):
            if (
                allowed not in config.tiers
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
