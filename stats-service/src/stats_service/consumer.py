"""The durable JetStream consumer that feeds the generation log (transport only; recording is in ingest.py).

One durable pull consumer, shared by every stats replica: each replica fetches batches from it, so the replicas
split the events like a queue. Explicit acks, sent only after the batch is committed, so events published while
the service was down (or fetched by a replica that died) are delivered again and recorded.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.messages.events import EVENT_VERSION, GenerationEvent, JobProgress
from contracts.runtime.bus import ensure_stream
from contracts.runtime.service import ServiceRuntime
from contracts.streams import EVENTS, EVENTS_STREAM, EVENTS_SUBJECTS
from stats_service.ingest import record_events
from stats_service.metrics import StatsMetrics

CONSUMER_NAME = "hub-stats-log"
# Progress events change nothing in the log (a job is "running" from its `started` event on): they are
# acknowledged without touching the database. (A server-side filter per kind would spare their delivery, but
# JetStream's multi-subject filtering over a stream with one subject per job is several times slower than this.)
SKIPPED_KINDS: tuple[type, ...] = (JobProgress,)
FETCH_BATCH = 512
FETCH_WAIT_S = 2.0
ACK_WAIT_S = 10.0  # a batch not acknowledged within this time (its replica died) goes to another replica
MAX_ACK_PENDING = 4096
RETRY_DELAYS_S = (0.5, 1, 2, 5, 10, 30)
# After a batch that did not fill, wait this long before fetching again, so the next batch holds more events and
# more of each job's events (accepted ... completed) merge into one row write: under a steady stream of jobs,
# fetching at once made one transaction of 1-3 events each time (~12 ms of CPU per generation, nearly all of it
# per-batch cost). The log is at most this much later; nothing waits on it.
GATHER_S = 0.25

_decoder = msgspec.json.Decoder(GenerationEvent)


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER_NAME,
        description="stats-service: records every generation in the log",
        deliver_policy=DeliverPolicy.ALL,  # a first start records what the stream still holds
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,  # never give up on an event: a database outage must not lose it
        max_ack_pending=MAX_ACK_PENDING,
        filter_subject=EVENTS_SUBJECTS,
    )


class EventConsumer:
    def __init__(self, runtime: ServiceRuntime, figures: StatsMetrics) -> None:
        self._runtime = runtime
        self._figures = figures
        self._log = runtime.log.bind(consumer=CONSUMER_NAME)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._js: JetStreamContext | None = None
        self.events_recorded = 0
        self._failing_since: float | None = None
        self._last_error = ""
        self._warned_versions: set[int] = set()

    async def setup(self) -> None:
        """Create the stream and the consumer if missing (idempotent: every replica does this at start)."""
        self._js = self._runtime.nc.jetstream()
        await ensure_stream(self._js, EVENTS, self._runtime.settings.jetstream_replicas)
        await self._js.add_consumer(EVENTS_STREAM, consumer_config())
        self._sub = await self._js.pull_subscribe_bind(durable=CONSUMER_NAME, stream=EVENTS_STREAM)

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self._sub is None:
                    await self.setup()
                assert self._sub is not None
                try:
                    messages = await self._sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
                except (TimeoutError, nats.errors.TimeoutError):
                    messages = []  # nothing new: the stream is idle
                if messages:
                    await self._handle(messages)
                    if len(messages) < FETCH_BATCH:
                        await asyncio.sleep(GATHER_S)
                if self._failing_since is not None:
                    self._log.info("recording events again")
                self._failing_since = None
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                self._failing(exc)
                self._log.warning("recording events failed; retrying", error=str(exc), retry_in_s=delay)
                if isinstance(exc, nats.js.errors.NotFoundError):
                    self._sub = None  # the stream or the consumer was deleted: create them again
                await asyncio.sleep(delay)

    async def _handle(self, messages: list[Msg]) -> None:
        events: list[GenerationEvent] = []
        accepted: list[Msg] = []
        for msg in messages:
            try:
                event = _decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                # It will never decode: drop it (loudly) instead of blocking the log behind it.
                self._log.error("undecodable generation event dropped", subject=msg.subject, error=str(exc))
                await msg.term()
                continue
            if event.version > EVENT_VERSION and event.version not in self._warned_versions:
                self._warned_versions.add(event.version)
                self._log.warning("generation events of a newer version; recording the fields known here",
                                  version=event.version, known=EVENT_VERSION)  # fmt: skip
            accepted.append(msg)
            if not isinstance(event, SKIPPED_KINDS):
                events.append(event)
        try:
            result = await record_events(events)
        except Exception:
            for msg in accepted:  # delivered again after the delay, once the database is back
                await msg.nak(delay=2.0)
            raise
        for msg in accepted:
            await msg.ack()
        self.events_recorded += result.events
        await self._figures.finished(result.finished)
        self._log.debug(
            "events recorded", events=result.events, jobs=result.jobs, inserted=result.inserted, updated=result.updated
        )

    def _failing(self, exc: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.time()
        self._last_error = str(exc) or type(exc).__name__

    async def health(self) -> str:
        """Raises while events cannot be recorded; otherwise says how far behind the log is."""
        if self._failing_since is not None and time.time() - self._failing_since > ACK_WAIT_S:
            raise RuntimeError(f"cannot record generation events since {self._failing_since:.0f}: {self._last_error}")
        if self._js is None:
            return "starting"
        info = await self._js.consumer_info(EVENTS_STREAM, CONSUMER_NAME)
        return (
            f"{info.num_pending} events waiting, {info.num_ack_pending} in progress, "
            f"{self.events_recorded} recorded by this replica"
        )
