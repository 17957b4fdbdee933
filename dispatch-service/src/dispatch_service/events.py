"""Publishing generation events on JetStream, so callers, the stats service and others can follow a job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from contracts.messages.events import GenerationEvent
from contracts.runtime import tracing
from contracts.runtime.bus import publish_durably
from contracts.runtime.logs import get_logger
from contracts.streams import event_subject, webhook_event_subject
from dispatch_service.progress import ProgressUpdate

log = get_logger("events")
_encoder = msgspec.json.Encoder()


class EventPublisher:
    """Stamps each event with a per-job sequence and publishes it with a de-duplication id.

    The sequence is a microsecond clock kept strictly increasing in this process, so events of one job stay
    ordered even when a retry of the job runs on another dispatcher replica.
    """

    def __init__(self, js: JetStreamContext, nc: NatsClient, *, within_s: float = 30.0) -> None:
        self._js = js
        self._nc = nc
        self._within_s = within_s  # how long a publish rides out a stream without leader
        self._last_seq = 0

    def next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    async def publish(
        self,
        event_type: type[GenerationEvent],
        *,
        within_s: float | None = None,
        webhooks: bool = False,
        **fields: Any,
    ) -> GenerationEvent:
        """Publish and wait for JetStream to confirm the event is stored, waiting for NATS while it is away up to
        `within_s` (default: the publisher's). Every retry sends the same event id, so it is stored once. With
        `webhooks` (the job wants them: contracts.messages.jobs.wants_webhooks) its copy for the gateway's webhook
        consumer is stored beside it, as durably."""
        event = event_type(seq=self.next_seq(), at=time.time(), **fields)
        payload = _encoder.encode(event)
        kind = event_type.__struct_config__.tag
        within_s = within_s or self._within_s
        publishing = [
            publish_durably(self._js, subject, payload, headers=headers, within_s=within_s, nc=self._nc)
            for subject, headers in _destinations(event, webhooks)
        ]
        with tracing.span("event.publish", kind="producer", job_id=event.job_id, event=kind):
            await (publishing[0] if len(publishing) == 1 else asyncio.gather(*publishing))
        return event

    async def publish_quietly(
        self, event_type: type[GenerationEvent], *, webhooks: bool = False, **fields: Any
    ) -> None:
        """Publish without waiting for JetStream's confirmation: for progress ticks, where a lost one is
        harmless and waiting for each would slow the job down."""
        event = event_type(seq=self.next_seq(), at=time.time(), **fields)
        payload = _encoder.encode(event)
        for subject, headers in _destinations(event, webhooks):
            await self._nc.publish(subject, payload, headers=tracing.inject(headers))


def _destinations(event: GenerationEvent, webhooks: bool) -> list[tuple[str, dict[str, str]]]:
    """The event's subject and de-duplication id, and with `webhooks` its copy's (an id of its own: JetStream
    de-duplicates by id across the whole stream)."""
    destinations = [(event_subject(event.job_id), {"Nats-Msg-Id": event.event_id})]
    if webhooks:
        destinations.append((webhook_event_subject(event.job_id), {"Nats-Msg-Id": f"{event.event_id}:webhook"}))
    return destinations


class ProgressRelay:
    """Turns one run's progress updates into progress events, thinned and with a heartbeat.

    At most one event every `every_s` (a fast sampler's every step would be a stored event and a notification
    to every follower); a change held back is sent when that time is up, so the last one is never lost. When
    nothing was sent for `heartbeat_s` the current progress is sent again (the first time `first_s` after the
    start), so followers hear from a job that sits in one slow node or in ComfyUI's queue.
    """

    def __init__(
        self,
        send: Callable[[ProgressUpdate], Awaitable[None]],
        *,
        every_s: float = 0.1,
        heartbeat_s: float = 1.0,
        first_s: float = 0.4,
        nodes_total: int = 0,
    ) -> None:
        self._send = send
        self._every_s = every_s
        self._heartbeat_s = heartbeat_s
        self._loop = asyncio.get_running_loop()
        self._latest = ProgressUpdate(0, 0, None, nodes_total=nodes_total)
        self._held = False  # a change not sent yet
        self._last_sent = self._loop.time() - heartbeat_s + first_s
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self._last_sent + heartbeat_s, self._due)
        self._sending: set[asyncio.Future[None]] = set()

    async def update(self, update: ProgressUpdate) -> None:
        """The run's progress moved (the `on_progress` of `ComfyClient.run`)."""
        self._latest = update
        if self._timer is None:
            return  # closed
        if self._loop.time() - self._last_sent >= self._every_s:
            self._held = False
            self._schedule(self._loop.time() + self._heartbeat_s)
            self._last_sent = self._loop.time()
            await self._send(update)
        elif not self._held:
            self._held = True
            self._schedule(self._last_sent + self._every_s)

    def close(self) -> None:
        """The run ended: no more events (its final event says how it ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._due)

    def _due(self) -> None:
        """A held change, or the heartbeat: send the current progress (beside the run, not in its way)."""
        self._held = False
        self._last_sent = self._loop.time()
        self._timer = self._loop.call_at(self._last_sent + self._heartbeat_s, self._due)
        sending = asyncio.ensure_future(self._send(self._latest))
        self._sending.add(sending)
        sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Future[None]) -> None:
        self._sending.discard(sending)
        if not sending.cancelled() and sending.exception() is not None:
            log.warning("could not send a job's progress", error=str(sending.exception()))
