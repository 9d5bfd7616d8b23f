"""The request counters against prometheus_client's own Counter and Histogram: same text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.store import RequestRow
from modelyard.telemetry import _LATENCY, _OVERHEAD, _RATE, Telemetry, _Counted, outcome


def row(
    model: str | None, status: int, ttft: float | None, duration: float, **kw: object
) -> RequestRow:
    fields: dict[str, object] = {
        "at": 0.0, "key": None, "endpoint": "/chat/completions", "asked": model or "x",
        "model": model, "node": "local", "instance": None, "decision": "d1", "status": status,
        "outcome": outcome(status), "stream": True, "tokens_in": None, "tokens_out": None,
        "wait_s": None, "ttft_s": ttft, "duration_s": duration, "error": None,
    }  # fmt: skip
    fields.update(kw)
    return RequestRow(**fields)  # type: ignore[arg-type]


ROWS = [
    # every latency bucket's edge, and either side of it
    *(row("a", 200, b, b + 1.0, tokens_out=7) for b in _LATENCY),
    *(row("a", 200, b * 1.001, b + 2.0, tokens_in=3) for b in _LATENCY),
    row("a", 200, 0.0, 0.5, tokens_in=10, tokens_out=20),
    row("b", 200, 1000.0, 1001.0, tokens_out=5000, stream=True),
    row("b", 499, None, 0.1),
    row("b", 504, 3.0, 9.0),  # a failed answer: counted, but not in the latency
    row("nope", 404, None, 0.0, decision=None),
    row(None, 400, None, 0.0, decision=None),
]
OVERHEADS = [*(_OVERHEAD), 0.0, 1.0, *(b / 2 for b in _OVERHEAD)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_counts_render_as_prometheus_client_would() -> None:
    # No scheduler or nodes: only the counted families are rendered, not the live ones.
    gpus = {"a": (0, 1), "b": ()}  # a on two GPUs of its node, b on its CPU
    telemetry = Telemetry(
        None, lambda: [], lambda: {"a", "b"}, lambda: {"r1"}, lambda m, n: gpus[m]
    )  # type: ignore[arg-type]
    counted = CollectorRegistry()
    counted.register(_Counted(telemetry))
    reg = CollectorRegistry()
    requests = Counter("modelyard_requests", "", ["model", "outcome"], registry=reg)
    tokens = Counter("modelyard_tokens", "", ["model", "direction"], registry=reg)
    decisions = Counter("modelyard_decisions", "", ["rule"], registry=reg)
    ttft = Histogram(
        "modelyard_time_to_first_byte_seconds", "", ["model"], buckets=_LATENCY, registry=reg
    )
    rate = Histogram("modelyard_tokens_per_second", "", ["model"], buckets=_RATE, registry=reg)
    overhead = Histogram("modelyard_gateway_overhead_seconds", "", buckets=_OVERHEAD, registry=reg)
    where = {
        (metric, labels): Histogram(
            f"modelyard_{'gpu' if len(labels) == 2 else 'node'}_{metric}", "", list(labels),
            buckets=_LATENCY if metric.startswith("time") else _RATE, registry=reg,
        )
        for metric in ("time_to_first_token_seconds", "tokens_per_second")
        for labels in (("node",), ("node", "gpu"))
    }  # fmt: skip
    for i, r in enumerate(ROWS):
        rule = "r1" if i % 3 == 0 else ("unknown" if i % 3 == 1 else None)
        spent = OVERHEADS[i % len(OVERHEADS)]
        telemetry.observe(r, spent, rule)
        model = r.model if r.model in ("a", "b") else "-"
        requests.labels(model, r.outcome).inc()
        if r.decision is not None:
            decisions.labels("r1" if rule == "r1" else "-").inc()
        overhead.observe(spent)
        if r.ttft_s is not None and r.outcome == "ok":
            ttft.labels(model).observe(r.ttft_s)
            streamed = r.tokens_out and r.stream and r.duration_s > r.ttft_s
            if streamed:
                rate.labels(model).observe(r.tokens_out / (r.duration_s - r.ttft_s))
            places = [[r.node]] + [[r.node, str(g)] for g in gpus[model]] if model != "-" else []
            for place in places:
                labels = ("node",) if len(place) == 1 else ("node", "gpu")
                where[("time_to_first_token_seconds", labels)].labels(*place).observe(r.ttft_s)
                if streamed:
                    speed = r.tokens_out / (r.duration_s - r.ttft_s)
                    where[("tokens_per_second", labels)].labels(*place).observe(speed)
        if r.tokens_in:
            tokens.labels(model, "in").inc(r.tokens_in)
        if r.tokens_out:
            tokens.labels(model, "out").inc(r.tokens_out)
    ours, theirs = (
        samples(generate_latest(counted).decode()),
        samples(generate_latest(reg).decode()),
    )
    assert ours == theirs
    assert ours[("modelyard_requests_total", (("model", "-"), ("outcome", "rejected")))] == 2


def test_speeds_by_node_and_gpu_are_the_means_of_what_was_counted() -> None:
    gpus = {"a": (0, 1), "b": ()}
    telemetry = Telemetry(None, lambda: [], lambda: {"a", "b"}, lambda: set(), lambda m, n: gpus[m])  # type: ignore[arg-type]
    for r in ROWS:
        telemetry.observe(r, None, None)
    ok = [r for r in ROWS if r.ttft_s is not None and r.outcome == "ok" and r.model in gpus]
    on_a = [r for r in ok if r.model == "a"]
    speeds = telemetry.speeds()
    assert [(s["node"], s["answers"]) for s in speeds["nodes"]] == [("local", len(ok))]
    assert speeds["nodes"][0]["ttft_s"] == round(sum(r.ttft_s or 0 for r in ok) / len(ok), 4)
    assert [(s["gpu"], s["answers"]) for s in speeds["gpus"]] == [(0, len(on_a)), (1, len(on_a))]
