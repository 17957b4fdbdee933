"""Prometheus metrics: one registry per service replica, gathered over NATS into the gateway's /metrics.

Each replica keeps its counters and histograms in memory (prometheus_client; an increment is a lock and an add,
nothing on the per-job path talks to anyone) and figures that are state rather than events (queue depth, slots,
reconnects) are read when a scrape asks (`on_scrape`). Every replica of every service answers the scatter subject
`hub.metrics.scrape` (no queue group) with its exposition text; `gather` collects the answers and `merge` joins
the families of all replicas into one valid exposition, labelling each sample with the replica it came from.
Metric names carry their service (`genimage_dispatch_…`), so two services never share a family.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.metrics_core import Metric

from contracts import subjects
from contracts.messages.health import MetricsReply
from contracts.runtime.logs import get_logger

log = get_logger("metrics")

# `_created` series double the text and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

NAMESPACE = "genimage"
# How long the gateway waits for replicas: the scatter ends when no answer came for QUIET_S (after the first
# one), or after MAX_S in any case; a replica slower than that is missing from this scrape (its `up` says so).
SCRAPE_QUIET_S = 0.25
SCRAPE_MAX_S = 2.0
REFRESH_TIMEOUT_S = 1.0  # a gauge refreshed by a query (queue depth) waits this long at most
# Seconds; from a cached 10 ms answer up to a long ComfyUI run.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

_reply_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(MetricsReply)


class _ScrapeCollector:
    """Figures read at scrape time from a callback (state, not events)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class ServiceMetrics:
    """The metrics of one service replica; names get the `genimage_<service>_` prefix."""

    def __init__(self, service: str, replica: str) -> None:
        self.service = service
        self.replica = replica
        self.registry = CollectorRegistry(auto_describe=False)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def name(self, suffix: str) -> str:
        return f"{NAMESPACE}_{self.service}_{suffix}"

    def counter(self, suffix: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.name(suffix), documentation, labels, registry=self.registry)

    def gauge(self, suffix: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self.name(suffix), documentation, labels, registry=self.registry)

    def histogram(
        self, suffix: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = DURATION_BUCKETS
    ) -> Histogram:
        return Histogram(self.name(suffix), documentation, labels, buckets=buckets, registry=self.registry)

    def on_scrape(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Call `collect` at every scrape; it yields metric families (GaugeMetricFamily, CounterMetricFamily)."""
        self.registry.register(_ScrapeCollector(collect))

    def before_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await `refresh` before each scrape (to set gauges from a query); one that fails or takes over
        REFRESH_TIMEOUT_S leaves its gauges as they were, and the scrape still answers."""
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshers:
            try:
                await asyncio.wait_for(refresh(), timeout=REFRESH_TIMEOUT_S)
            except Exception:  # a figure left stale must not cost the other figures of this replica
                log.warning("metrics refresh failed", refresh=getattr(refresh, "__qualname__", repr(refresh)))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    async def reply(self) -> bytes:
        await self.refresh()
        return _reply_encoder.encode(
            MetricsReply(service=self.service, replica=self.replica, exposition=self.exposition())
        )


async def answer_scrapes(nc: NatsClient, metrics: ServiceMetrics) -> None:
    """Answer every scrape of the hub with this replica's figures (a plain subscription: every replica answers)."""

    async def answer(msg: Msg) -> None:
        if msg.reply:
            await msg.respond(await metrics.reply())

    await nc.subscribe(subjects.METRICS_SCRAPE, cb=answer)


async def gather(nc: NatsClient, *, quiet_s: float = SCRAPE_QUIET_S, max_s: float = SCRAPE_MAX_S) -> list[MetricsReply]:
    """Ask every replica of every service for its figures; the answers that came within the window."""
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        answers.put_nowait(msg.data)

    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox, cb=collect)
    replies: list[MetricsReply] = []
    try:
        await nc.publish(subjects.METRICS_SCRAPE, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        while (left := deadline - loop.time()) > 0:
            wait = min(left, quiet_s) if replies else left
            try:
                data = await asyncio.wait_for(answers.get(), timeout=wait)
            except TimeoutError:
                break
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                replies.append(_reply_decoder.decode(data))
    finally:
        await subscription.unsubscribe()
    return replies


def merge(replies: Iterable[MetricsReply]) -> bytes:
    """One exposition of all replicas: samples of the same family joined under one HELP/TYPE, each labelled
    with its `replica`, plus `genimage_scrape_replica_up{service,replica}` for every replica that answered.

    Text work only (no parse into objects): it runs on the gateway's event loop at every scrape, and parsing
    a dozen replicas' answers took ~400 ms there (bench/metrics_cost.py)."""
    up = f"{NAMESPACE}_scrape_replica_up"
    heads: dict[str, list[str]] = {
        up: [f"# HELP {up} Replicas that answered this scrape (1 each)", f"# TYPE {up} gauge"]
    }
    bodies: dict[str, list[str]] = {up: []}
    for reply in sorted(replies, key=lambda r: (r.service, r.replica)):
        replica = f'replica="{_label_value(reply.replica)}"'
        bodies[up].append(f'{up}{{service="{_label_value(reply.service)}",{replica}}} 1.0')
        family: str | None = None
        for line in reply.exposition.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head = heads.setdefault(family, [])
                    if len(head) < 2 and not any(h.startswith(f"# {parts[1]} ") for h in head):
                        head.append(line)  # the first replica's words; the same code writes the same
                    bodies.setdefault(family, [])
            elif line and family is not None:
                bodies[family].append(_with_label(line, replica))
    out = [line for name, head in heads.items() for line in (*head, *bodies[name])]
    return ("\n".join(out) + "\n").encode()


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _with_label(sample: str, label: str) -> str:
    """`name{a="1"} 2` -> `name{replica="x",a="1"} 2`; `name 2` -> `name{replica="x"} 2`."""
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1 :]
        return f"{sample[: brace + 1]}{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"
