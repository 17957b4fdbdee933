"""What the metrics cost: the work added to each job and request, and one scrape's gather-side work.

    .venv/bin/python bench/metrics_cost.py [--rounds 200000] [--replicas 12]

In this process, no NATS: (1) a labelled counter increment and a histogram observation, as the gateway does per
HTTP request (two of each) and the stats service per finished job (one counter, two histograms); (2) the
exposition of one replica's registry with the hub's families filled; (3) `merge` of that many replicas' answers,
which the gateway runs per scrape. Figures are printed (per operation, and as a share of one plain dict update,
measured in the same run, to compare machines).
"""

from __future__ import annotations

import argparse
import time

from contracts.messages.health import MetricsReply
from contracts.runtime.metrics import ServiceMetrics, merge


def per_op_ns(rounds: int, op: object) -> float:
    started = time.perf_counter_ns()
    for _ in range(rounds):
        op()  # type: ignore[operator]
    return (time.perf_counter_ns() - started) / rounds


def filled_replica(replica: str) -> ServiceMetrics:
    """A replica with the gateway's and the stats service's families, 20 routes x 5 statuses, 6 render types."""
    metrics = ServiceMetrics("bench", replica)
    requests = metrics.counter("http_requests_total", "requests", ("route", "method", "status"))
    duration = metrics.histogram("http_request_duration_seconds", "duration", ("route",))
    generations = metrics.counter("generations_total", "generations", ("status", "render_type", "key"))
    run = metrics.histogram("run_seconds", "run", ("render_type", "instance"))
    for r in range(20):
        for status in ("200", "202", "400", "404", "500"):
            requests.labels(f"/route/{r}", "GET", status).inc()
        duration.labels(f"/route/{r}").observe(0.01)
    for t in range(6):
        for status in ("completed", "failed", "cancelled"):
            generations.labels(status, f"type{t}", "key").inc()
        for i in range(4):
            run.labels(f"type{t}", f"instance{i}").observe(3.0)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--replicas", type=int, default=12)
    args = parser.parse_args()
    metrics = ServiceMetrics("bench", "r0")
    counter = metrics.counter("requests_total", "requests", ("route", "method", "status"))
    histogram = metrics.histogram("duration_seconds", "duration", ("route",))
    plain: dict[str, int] = {}

    def dict_update() -> None:
        plain["k"] = plain.get("k", 0) + 1

    def inc() -> None:
        counter.labels("/api/v1/generations", "POST", "202").inc()

    def observe() -> None:
        histogram.labels("/api/v1/generations").observe(0.0123)

    base = per_op_ns(args.rounds, dict_update)
    inc_ns, observe_ns = per_op_ns(args.rounds, inc), per_op_ns(args.rounds, observe)
    print(f"plain dict update          {base:8.0f} ns")
    print(f"labelled counter inc       {inc_ns:8.0f} ns  ({inc_ns / base:.1f}x a dict update)")
    print(f"labelled histogram observe {observe_ns:8.0f} ns  ({observe_ns / base:.1f}x)")
    print(f"per HTTP request (2 + 2)   {2 * (inc_ns + observe_ns) / 1000:8.2f} us")
    replicas = [filled_replica(f"r{n}") for n in range(args.replicas)]
    started = time.perf_counter()
    texts = [r.exposition() for r in replicas]
    exposition_ms = (time.perf_counter() - started) * 1000 / len(replicas)
    answers = [MetricsReply(service="bench", replica=f"r{n}", exposition=t) for n, t in enumerate(texts)]
    started = time.perf_counter()
    merged = merge(answers)
    merge_ms = (time.perf_counter() - started) * 1000
    print(f"one replica's exposition   {exposition_ms:8.2f} ms  ({len(texts[0]) / 1024:.0f} KiB)")
    print(f"merge of {args.replicas} replicas       {merge_ms:8.2f} ms  ({len(merged) / 1024:.0f} KiB out)")


if __name__ == "__main__":
    main()
