"""The durable JetStream consumer that feeds the generation log (declared here, run by the service runtime;
recording is in ingest.py).

One durable pull consumer, shared by every stats replica: each replica fetches batches from it, so the replicas
split the events like a queue. Explicit acks, sent only after the batch is committed, so events published while
the service was down (or fetched by a replica that died) are delivered again and recorded.
"""

from __future__ import annotations

from typing import Final

from contracts.messages.events import EVENT_VERSION, GenerationEvent, JobProgress
from contracts.runtime.consumers import Durable, DurableConsumer
from contracts.runtime.logs import get_logger
from contracts.streams import EVENTS
from stats_service.ingest import record_events
from stats_service.metrics import StatsMetrics

CONSUMER_NAME = "hub-stats-log"
# Progress events change nothing in the log (a job is "running" from its `started` event on): they are
# acknowledged without touching the database. (A server-side filter per kind would spare their delivery, but
# JetStream's multi-subject filtering over a stream with one subject per job is several times slower than this.)
SKIPPED_KINDS: tuple[type, ...] = (JobProgress,)
ACK_WAIT_S = 10.0  # a batch not acknowledged within this time (its replica died) goes to another replica

EVENT_LOG: Final = Durable[GenerationEvent](
    name=CONSUMER_NAME,
    stream=EVENTS,
    message=GenerationEvent,
    description="stats-service: records every generation in the log",
    what="generation event",
    doing="recording events",
    ack_wait_s=ACK_WAIT_S,
    max_ack_pending=4096,
    batch=512,
    # After a batch that did not fill, wait this long before fetching again, so the next batch holds more events and
    # more of each job's events (accepted ... completed) merge into one row write: under a steady stream of jobs,
    # fetching at once made one transaction of 1-3 events each time (~12 ms of CPU per generation, nearly all of it
    # per-batch cost). The log is at most this much later; nothing waits on it.
    gather_s=0.25,
)

log = get_logger("stats").bind(consumer=CONSUMER_NAME)


class EventLog:
    """Records each fetched batch of generation events in one transaction."""

    def __init__(self, figures: StatsMetrics) -> None:
        self._figures = figures
        self.events_recorded = 0
        self._warned_versions: set[int] = set()
        self.consumer: DurableConsumer[GenerationEvent] | None = None  # set once registered with the runtime

    async def record(self, batch: list[GenerationEvent]) -> None:
        for event in batch:
            if event.version > EVENT_VERSION and event.version not in self._warned_versions:
                self._warned_versions.add(event.version)
                log.warning("generation events of a newer version; recording the fields known here",
                            version=event.version, known=EVENT_VERSION)  # fmt: skip
        result = await record_events([event for event in batch if not isinstance(event, SKIPPED_KINDS)])
        self.events_recorded += result.events
        await self._figures.finished(result.finished)
        log.debug(
            "events recorded", events=result.events, jobs=result.jobs, inserted=result.inserted, updated=result.updated
        )

    async def health(self) -> str:
        """Raises while events cannot be recorded; otherwise says how far behind the log is."""
        if self.consumer is None:
            return "starting"
        if self.consumer.failing is not None and self.consumer.failing_for_s() > ACK_WAIT_S:
            failing = self.consumer.failing
            raise RuntimeError(f"cannot record generation events since {failing.since:.0f}: {failing.error}")
        info = await self.consumer.info()
        return (
            f"{info.num_pending} events waiting, {info.num_ack_pending} in progress, "
            f"{self.events_recorded} recorded by this replica"
        )
