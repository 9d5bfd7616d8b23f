"""Telemetry: Prometheus metrics, fed by each finished request and read live at scrape.

Counters and histograms are added to once per request, after its answer; everything that
is state (instances, queues, nodes, GPUs) is read from the scheduler and the nodes when
``/metrics`` is scraped, so the hot path keeps no extra books. Labels are bounded: model
names and rule names come from the config (anything else is ``-``), outcomes from a fixed
list, nodes and GPUs from the inventory.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from modelyard.lifecycle import State
from modelyard.placement import Gpu

if TYPE_CHECKING:
    from modelyard.scheduler import Scheduler
    from modelyard.store import RequestRow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("ok", "client_gone", "timeout", "upstream_error", "busy", "unavailable", "rejected")
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_OVERHEAD = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
_RATE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def outcome(status: int) -> str:
    """The outcome class of a final status (a stream's failure counts, not its 200)."""
    if status < 400:
        return "ok"
    return {499: "client_gone", 504: "timeout", 502: "upstream_error", 429: "busy"}.get(
        status, "unavailable" if status >= 500 else "rejected"
    )


@dataclass(frozen=True)
class NodeReading:
    """What a scrape needs of one node."""

    name: str
    reachable: bool
    mode: str
    gpus: list[Gpu]


class _Histogram:
    """One histogram's buckets (non-cumulative while counting) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # `le` is inclusive
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        running = list(accumulate(self.counts))
        les = [repr(float(b)) for b in self.bounds] + ["+Inf"]  # as Prometheus writes them
        return list(zip(les, running, strict=True))


class Telemetry:
    """The gateway's metrics.

    Each finished request adds to plain counters and buckets (a few dict operations on the
    event loop); they become Prometheus families only when ``/metrics`` is scraped.
    """

    def __init__(
        self,
        scheduler: Callable[[], Scheduler],
        nodes: Callable[[], Iterable[NodeReading]],
        models: Callable[[], Collection[str]],
        rules: Callable[[], Collection[str]],
        gpus_of: Callable[[str, str], Collection[int]] = lambda model, node: (),
    ) -> None:
        self._models, self._rules, self._gpus_of = models, rules, gpus_of
        # The same two figures by node and by GPU (``gpus_of``: the GPUs a model uses there)
        self.ttft_node: dict[str, _Histogram] = {}
        self.rate_node: dict[str, _Histogram] = {}
        self.ttft_gpu: dict[tuple[str, str], _Histogram] = {}  # (node, GPU index)
        self.rate_gpu: dict[tuple[str, str], _Histogram] = {}
        self.requests: dict[tuple[str, str], int] = {}  # (model, outcome)
        self.tokens: dict[tuple[str, str], int] = {}  # (model, direction)
        self.speech: dict[tuple[str, str], float] = {}  # (model, unit): speech's usage
        self.decisions: dict[str, int] = {}  # rule
        self.ttft: dict[str, _Histogram] = {}  # model
        self.rate: dict[str, _Histogram] = {}  # model
        self.overhead = _Histogram(_OVERHEAD)
        self.lease_wait: dict[str, _Histogram] = {}  # GPU lease (config names only)
        self.registry = CollectorRegistry()
        self.registry.register(_Counted(self))
        self.registry.register(_Live(scheduler, nodes))

    def _model(self, name: str | None) -> str:
        return name if name is not None and name in self._models() else "-"

    def observe(self, row: RequestRow, overhead: float | None, rule: str | None) -> None:
        """Count one finished request."""
        model = self._model(row.model)
        key = (model, row.outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        if row.decision is not None:
            known = rule if rule is not None and rule in self._rules() else "-"
            self.decisions[known] = self.decisions.get(known, 0) + 1
        if overhead is not None:
            self.overhead.observe(overhead)
        if row.ttft_s is not None and row.outcome == "ok":
            _histogram(self.ttft, model, _LATENCY).observe(row.ttft_s)
            generating = row.duration_s - row.ttft_s
            rate = None
            if row.tokens_out and row.stream and generating > 0:
                rate = row.tokens_out / generating
                _histogram(self.rate, model, _RATE).observe(rate)
            if row.node is not None and model != "-":
                node = row.node
                places: list[tuple[dict[Any, _Histogram], dict[Any, _Histogram], Any]] = [
                    (self.ttft_node, self.rate_node, node),
                    *((self.ttft_gpu, self.rate_gpu, (node, str(g)))
                      for g in self._gpus_of(model, node)),
                ]  # fmt: skip
                for ttfts, rates, key in places:
                    _histogram(ttfts, key, _LATENCY).observe(row.ttft_s)
                    if rate is not None:
                        _histogram(rates, key, _RATE).observe(rate)
        if row.audio_s:
            key = (model, "audio_seconds")
            self.speech[key] = self.speech.get(key, 0.0) + row.audio_s
        if row.chars:
            key = (model, "characters")
            self.speech[key] = self.speech.get(key, 0.0) + row.chars
        if row.tokens_in:
            key = (model, "in")
            self.tokens[key] = self.tokens.get(key, 0) + row.tokens_in
        if row.tokens_out:
            key = (model, "out")
            self.tokens[key] = self.tokens.get(key, 0) + row.tokens_out

    def speeds(self) -> dict[str, list[dict[str, Any]]]:
        """Mean time to first token and generation speed so far, per node and per GPU (for
        ``/admin/status`` and ``modelyard top``; ``/metrics`` has the histograms)."""
        nodes = [
            {"node": node, **_speed(ttft, self.rate_node.get(node))}
            for node, ttft in sorted(self.ttft_node.items())
        ]
        gpus = [
            {"node": node, "gpu": int(gpu), **_speed(ttft, self.rate_gpu.get((node, gpu)))}
            for (node, gpu), ttft in sorted(self.ttft_gpu.items())
        ]
        return {"nodes": nodes, "gpus": gpus}

    def observe_lease_wait(self, lease: str, seconds: float) -> None:
        """A request's wait for its turn on a GPU lease (0 when it was free)."""
        _histogram(self.lease_wait, lease, _LATENCY).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _speed(ttft: _Histogram, rate: _Histogram | None) -> dict[str, Any]:
    """Answers counted, their mean time to first token and mean tokens/s (streamed ones)."""
    answers = sum(ttft.counts)
    streamed = sum(rate.counts) if rate is not None else 0
    return {
        "answers": answers,
        "ttft_s": round(ttft.sum / answers, 4) if answers else None,
        "tokens_per_s": round(rate.sum / streamed, 2) if rate and streamed else None,
    }


def _histogram(by: dict[Any, _Histogram], label: Any, bounds: tuple[float, ...]) -> _Histogram:
    found = by.get(label)
    if found is None:
        found = by[label] = _Histogram(bounds)
    return found


class _Counted(Collector):
    """What finished requests added up to, as Prometheus families."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self._t
        requests = CounterMetricFamily(
            "modelyard_requests", "Requests by model and outcome.", labels=["model", "outcome"]
        )
        for (model, result), n in sorted(t.requests.items()):
            requests.add_metric([model, result], n)
        tokens = CounterMetricFamily(
            "modelyard_tokens", "Tokens in (prompt) and out.", labels=["model", "direction"]
        )
        for (model, direction), n in sorted(t.tokens.items()):
            tokens.add_metric([model, direction], n)
        speech = CounterMetricFamily(
            "modelyard_speech", "Speech's usage: seconds of audio transcribed, characters "
            "spoken.", labels=["model", "unit"],
        )  # fmt: skip
        for (model, unit), amount in sorted(t.speech.items()):
            speech.add_metric([model, unit], amount)
        decisions = CounterMetricFamily(
            "modelyard_decisions", "Routing decisions by the policy rule that held.",
            labels=["rule"],
        )  # fmt: skip
        for rule, n in sorted(t.decisions.items()):
            decisions.add_metric([rule], n)
        ttft = _family(
            "modelyard_time_to_first_byte_seconds",
            "From a request's arrival to the first byte of its answer (first token of a "
            "stream), queue and load included.",
            t.ttft,
        )
        rate = _family(
            "modelyard_tokens_per_second",
            "Generation speed of each answer: tokens out over the time after the first byte.",
            t.rate,
        )
        overhead = HistogramMetricFamily(
            "modelyard_gateway_overhead_seconds",
            "Time spent in the gateway itself before the request went upstream (the wait "
            "for a slot or a load excluded).",
        )
        overhead.add_metric([], t.overhead.buckets(), t.overhead.sum)
        lease_wait = _family(
            "modelyard_gpu_lease_wait_seconds",
            "Time a request waited for its turn on a serial GPU (a GPU lease), after its slot.",
            t.lease_wait,
            ["lease"],
        )
        yield from (requests, tokens, speech, decisions, ttft, rate, overhead, lease_wait)
        first, speed = (
            "Time to the first byte of each answer",
            "Generation speed of each streamed answer",
        )
        every = " (every GPU the model uses)"
        yield from (
            _family(
                "modelyard_node_time_to_first_token_seconds",
                f"{first}, by node.",
                t.ttft_node,
                ["node"],
            ),
            _family(
                "modelyard_node_tokens_per_second", f"{speed}, by node.", t.rate_node, ["node"]
            ),
            _family(
                "modelyard_gpu_time_to_first_token_seconds",
                f"{first}, by GPU{every}.",
                t.ttft_gpu,
                ["node", "gpu"],
            ),
            _family(
                "modelyard_gpu_tokens_per_second",
                f"{speed}, by GPU{every}.",
                t.rate_gpu,
                ["node", "gpu"],
            ),
        )


def _family(
    name: str, doc: str, histograms: Mapping[Any, _Histogram], labels: list[str] | None = None
) -> HistogramMetricFamily:
    """A histogram family keyed by one label (``model`` unless said) or by several (keys are
    then tuples of their values)."""
    family = HistogramMetricFamily(name, doc, labels=labels or ["model"])
    for key, h in sorted(histograms.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], h.buckets(), h.sum)
    return family


class _Live(Collector):
    """Instances, queues, nodes and GPUs as they are at the scrape."""

    def __init__(
        self, scheduler: Callable[[], Scheduler], nodes: Callable[[], Iterable[NodeReading]]
    ) -> None:
        self._scheduler, self._nodes = scheduler, nodes

    def collect(self) -> Iterator[Metric]:
        sched = self._scheduler()
        state = GaugeMetricFamily(
            "modelyard_instance_state", "1 for the state each model's instance is in.",
            labels=["model", "node", "state"],
        )  # fmt: skip
        slots = GaugeMetricFamily(
            "modelyard_slots_in_use", "Requests running on the instance.", labels=["model"]
        )
        queue = GaugeMetricFamily(
            "modelyard_queue_depth", "Requests waiting for a slot or a load.", labels=["model"]
        )
        restarts = CounterMetricFamily(
            "modelyard_instance_restarts", "Crashes and failed starts since the gateway began.",
            labels=["model"],
        )  # fmt: skip
        leaks = CounterMetricFamily(
            "modelyard_slot_leaks",
            "Places found held by finished requests, and handed back (should stay 0).",
            labels=["model"],
        )
        waiting = sched.waiting()
        for name, inst in sched.instances.items():
            if name not in sched.config.models:
                continue
            node = sched.config.node_of(name)
            for s in State:
                state.add_metric([name, node, s.value], 1.0 if inst.state is s else 0.0)
            slots.add_metric([name], inst.in_flight)
            queue.add_metric([name], waiting.get(name, 0))
            restarts.add_metric([name], inst.restarts)
            leaks.add_metric([name], sched.leaks.get(name, 0))
        yield from (state, slots, queue, restarts, leaks)
        lines = GaugeMetricFamily(
            "modelyard_gpu_lease_waiting", "Requests waiting for their turn on a GPU lease.",
            labels=["lease"],
        )  # fmt: skip
        waiting_for = {v["lease"]: len(v["waiting"]) for v in sched.gpu_leases.view(0.0)}
        config = sched.config
        for name in sorted({lease for m in config.models for lease in config.leases_of(m)}):
            lines.add_metric([name], waiting_for.get(name, 0))
        yield lines
        yield from _node_metrics(self._nodes())


def _node_metrics(nodes: Iterable[NodeReading]) -> Iterator[Metric]:
    up = GaugeMetricFamily("modelyard_node_up", "1 when the node answers.", labels=["node"])
    mode = GaugeMetricFamily(
        "modelyard_node_mode", "1 for the mode each node is in.", labels=["node", "mode"]
    )
    gpu = ["node", "gpu", "name"]
    used = GaugeMetricFamily("modelyard_gpu_memory_used_bytes", "GPU memory in use.", labels=gpu)
    total = GaugeMetricFamily("modelyard_gpu_memory_total_bytes", "GPU memory.", labels=gpu)
    util = GaugeMetricFamily("modelyard_gpu_utilization_ratio", "GPU busy share.", labels=gpu)
    temp = GaugeMetricFamily("modelyard_gpu_temperature_celsius", "GPU temperature.", labels=gpu)
    power = GaugeMetricFamily("modelyard_gpu_power_watts", "GPU power draw.", labels=gpu)
    for node in nodes:
        up.add_metric([node.name], 1.0 if node.reachable else 0.0)
        mode.add_metric([node.name, node.mode], 1.0)
        for g in node.gpus:
            labels = [node.name, str(g.index), g.name]
            total.add_metric(labels, g.total)
            if g.measured:
                used.add_metric(labels, g.used)
            if g.utilization is not None:
                util.add_metric(labels, g.utilization / 100)
            if g.temperature is not None:
                temp.add_metric(labels, g.temperature)
            if g.power is not None:
                power.add_metric(labels, g.power)
    yield from (up, mode, used, total, util, temp, power)
