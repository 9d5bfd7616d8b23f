"""What the scheduler knows of its models and GPUs, read from the config and the nodes.

Worked out again only when the config or a node changes (``Scheduler.poke``), not per
request: where each model runs, what it needs there, whether placement refuses it, how
many requests it serves at once; and every GPU with the memory its node keeps free.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelyard import span
from modelyard.config import Config
from modelyard.instance import slots_of
from modelyard.lifecycle import ModelFacts, Timing
from modelyard.nodes import NodeHandle
from modelyard.placement import Inventory, slow_link


def model_facts(config: Config, nodes: Mapping[str, NodeHandle]) -> dict[str, ModelFacts]:
    """What ``decide`` needs of each model of ``config``."""
    facts = {}
    for name, m in config.models.items():
        node = config.node_of(name)
        # A model across nodes: its node holds only its share, which span.start checks with
        # the parts' (its whole need on its node's GPUs alone would refuse it everywhere);
        # once it runs, what it holds on each node is a resident's (``Scheduler.parts``).
        need = None if m.parts_on or m.spans_auto else nodes[node].need(name)
        blocked = None
        if need is not None:
            problem = slow_link(need, nodes[node].gpus(), config.placement.slow_link_width)
            if problem and config.placement.moe_on_slow_link == "refuse":
                blocked = f"{name} refused: {problem} (placement.moe_on_slow_link: refuse)"
        facts[name] = ModelFacts(
            name, m.swap_group, m.pinned, m.ttl, node, need, blocked, slots_of(m), m.queue,
            span.candidates(config, name),
        )  # fmt: skip
    return facts


def inventory(config: Config, nodes: Mapping[str, NodeHandle]) -> Inventory:
    """Every GPU of every node, and the memory each node keeps free on them."""
    gpus = {(g.node, g.index): g for node in nodes.values() for g in node.gpus()}
    reserve = {name: spec.reserve for name, spec in config.nodes.items()}
    return Inventory(gpus, reserve)


def timing(config: Config) -> Timing:
    """The scheduler's clocks, from ``config.scheduler``."""
    s = config.scheduler
    return Timing(
        s.drain_timeout, s.max_swap_delay, s.restart_backoff, s.restart_backoff_max, s.max_restarts
    )
