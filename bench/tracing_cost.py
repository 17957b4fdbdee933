"""What the tracing hooks cost per NATS request, publish and job, off (no OTEL_EXPORTER_OTLP_ENDPOINT) and on.

    .venv/bin/python bench/tracing_cost.py [--rounds 200000]

Times, in one process, what the hooks of contracts.runtime.tracing add where the hub calls them: per NATS request
the client side (`span` + `inject`) and the answering side (`span` with the request's headers), per JetStream
publish (`inject`) and per job (the `job.run` span with its attributes). Off, each hook returns at its first line;
on, spans go through the batch processor to an in-memory exporter (a collector's network cost is not the hub's).
Also printed: whether the SDK was imported while off (it must not be). Compare with bench/cost_bench.py's whole-hub
CPU per generation (tens of ms).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from contracts.runtime import tracing


def per_call_ns(rounds: int, work: Callable[[], None]) -> float:
    work()  # warm-up
    started = time.perf_counter_ns()
    for _ in range(rounds):
        work()
    return (time.perf_counter_ns() - started) / rounds


def request_client() -> None:
    with tracing.span("hub.dispatch.jobs.submit", kind="client"):
        tracing.inject()


HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def request_server() -> None:
    with tracing.span("hub.dispatch.jobs.submit", kind="server", parent=HEADERS):
        pass


def publish() -> None:
    tracing.inject({"Nats-Msg-Id": "job-1:1"})


def job() -> None:
    with tracing.span("job.run", kind="consumer", parent=HEADERS, job_id="j", render_type="t", instance="i", attempt=1):
        pass


def nothing() -> None:
    pass


def measure(label: str, rounds: int) -> None:
    base = per_call_ns(rounds, nothing)
    figures = {name: per_call_ns(rounds, work) - base for name, work in HOOKS.items()}
    print(f"{label:4s}: " + "   ".join(f"{name} {ns:8.0f} ns" for name, ns in figures.items()))


HOOKS = {"request (client)": request_client, "request (server)": request_server, "publish": publish, "job": job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()
    measure("off", args.rounds)
    sdk_loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
    print(f"      SDK modules imported while off: {len(sdk_loaded)}")

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))  # as configure does
    tracing.install(provider)
    measure("on", args.rounds // 10)
    tracing.shutdown()


if __name__ == "__main__":
    main()
