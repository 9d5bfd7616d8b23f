"""What routing adds to each request: features() + route() on the S2 policy (6 rules).

.venv/bin/python bench/route_cost.py
"""

from __future__ import annotations

import statistics
import timeit
from pathlib import Path

from modelyard.config import load_config
from modelyard.openai_body import features
from modelyard.routing import Cluster, route

EXAMPLE = Path(__file__).parent.parent / "examples" / "s2-two-machines.yaml"


def main() -> None:
    cfg = load_config(EXAMPLE, environ={})
    body = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "please refactor the parser " * 20},
        ],
    }
    headers = {"content-type": "application/json", "x-force-big": "false"}
    cluster = Cluster(
        modes={"server": ("open", "open"), "gamer": ("normal", "open")},
        reachable={"server": True, "gamer": True},
    )
    n = 5000
    runs = timeit.repeat(lambda: route(cfg, features(body, headers), cluster), number=n, repeat=5)
    per = [r / n * 1e6 for r in runs]
    print(
        f"features + route, S2 policy: median {statistics.median(per):.1f} µs per request "
        f"(5 runs of {n}: {', '.join(f'{p:.1f}' for p in per)})"
    )


if __name__ == "__main__":
    main()
