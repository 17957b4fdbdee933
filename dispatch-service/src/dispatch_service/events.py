"""Publishing generation events on JetStream, so callers, the stats service and others can follow a job."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from contracts.messages.events import GenerationEvent
from contracts.runtime.bus import publish_durably
from contracts.streams import event_subject

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

    async def publish(self, event_type: type[GenerationEvent], **fields: Any) -> GenerationEvent:  # type: ignore[valid-type]
        """Publish and wait for JetStream to confirm the event is stored."""
        event = event_type(seq=self.next_seq(), at=time.time(), **fields)
        subject, payload, headers = self._message(event)
        await publish_durably(self._js, subject, payload, headers=headers, within_s=self._within_s)
        return event

    async def publish_quietly(self, event_type: type[GenerationEvent], **fields: Any) -> None:  # type: ignore[valid-type]
        """Publish without waiting for JetStream's confirmation: for progress ticks, where a lost one is
        harmless and waiting for each would slow the job down."""
        event = event_type(seq=self.next_seq(), at=time.time(), **fields)
        subject, payload, headers = self._message(event)
        await self._nc.publish(subject, payload, headers=headers)

    @staticmethod
    def _message(event: GenerationEvent) -> tuple[str, bytes, dict[str, str]]:  # type: ignore[valid-type]
        kind = type(event).__struct_config__.tag  # type: ignore[attr-defined]
        return event_subject(event.job_id, kind), _encoder.encode(event), {"Nats-Msg-Id": event.event_id}
