"""Webhooks: a job submitted with a `callback_url` gets its final state POSTed there, signed with its API key's
webhook secret (Standard Webhooks: `Webhook-Id`, `Webhook-Timestamp`, `Webhook-Signature: v1,<base64 HMAC-SHA256
of "{id}.{timestamp}.{body}">`).

Delivered by the gateway because it owns the API keys and so the signing secrets (no secret crosses NATS). A
durable JetStream consumer on the generation events, shared by every gateway replica: an `accepted` event with a
callback records the job's delivery row; its final event is POSTed, acknowledged only once the receiver answered
2xx (or after the last attempt), and otherwise re-delivered by JetStream after a growing delay, so a restart or a
receiver outage loses no webhook. The URL goes through the same address checks as input image URLs
(contracts.runtime.outbound_url: public addresses only unless allowed in HUB_INPUT_URL_ALLOW), at submit and again
at each attempt (pinned to the checked address); redirects are not followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any, Final

import httpx
import msgspec
from nats.js.api import DeliverPolicy

from contracts.errors import ErrorCode, HubError
from contracts.messages.events import (
    GenerationEvent,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobProgress,
)
from contracts.messages.jobs import GenerationRequest
from contracts.messages.keys import WebhookDelivery
from contracts.runtime import tracing
from contracts.runtime.consumers import Durable, Retry, message_headers
from contracts.runtime.outbound_url import UrlAllowlist, checked_address, pinned_request
from contracts.runtime.service import ServiceRuntime
from contracts.streams import EVENTS, job_of_event_subject
from gateway.store import WEBHOOK_SECRET_PREFIX, ApiKeyStore
from gateway.tables import WebhookRow

FIELD = "callback_url"
ALLOW_VARIABLE = "HUB_INPUT_URL_ALLOW"
CONSUMER_NAME = "hub-gateway-webhooks"
FINAL_EVENTS: tuple[type, ...] = (JobCompleted, JobFailed, JobCancelled)
# Delay before attempt n+1 after n failed attempts; after the last one the delivery is given up (recorded).
RETRY_DELAYS_S: tuple[float, ...] = (1, 2, 5, 30, 120, 600, 1800, 3600)
POST_TIMEOUT_S = 10.0

DELIVERIES: Final = Durable[GenerationEvent](
    name=CONSUMER_NAME,
    stream=EVENTS,
    message=GenerationEvent,
    description="gateway: POSTs the final state of jobs that named a callback_url",
    what="generation event",
    doing="delivering webhooks",
    deliver_policy=DeliverPolicy.NEW,  # webhooks start when the feature does, not with the stream's past
    ack_wait_s=30.0,  # longer than one POST: a delivery held by a replica that died goes to another after this
    # Deliveries waiting for a retry stay un-acknowledged (for up to the longest delay): far above the server's
    # default of 1000, so a receiver that is down for long does not hold back every other job's webhooks.
    max_ack_pending=50_000,
    batch=64,
    retry_delays_s=(2.0,),
    # One slow receiver must not hold the others back: jobs are handled together, each job's events one after the
    # other (in stream order), so its receiver gets them in order.
    in_order_by=job_of_event_subject,
    context_key="job_id",
)


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of "{id}.{timestamp}.{body}", keyed with the base64 part of `whsec_...`."""
    key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookBody(msgspec.Struct, kw_only=True):
    type: str  # "generation.completed", "generation.failed", "generation.cancelled" or "generation.progress"
    job_id: str
    data: Any  # the job's generation event (final: outputs, timings or error; progress: percent, node, steps)


def webhook_body(event: Any) -> bytes:
    kind = type(event).__struct_config__.tag
    return msgspec.json.encode(WebhookBody(type=f"generation.{kind}", job_id=event.job_id, data=event))


class Webhooks:
    """Checks a callback at submit; delivers the final states (`handle`, fed by the DELIVERIES consumer)."""

    def __init__(self, runtime: ServiceRuntime, keys: ApiKeyStore, allow: UrlAllowlist) -> None:
        self._keys = keys
        self._allow = allow
        self._log = runtime.log.bind(consumer=CONSUMER_NAME)
        self.delivered = 0

    async def check_callback(self, generation: GenerationRequest) -> None:
        """Refuses a callback the hub would not deliver: no key to sign with, or an address not allowed."""
        if generation.callback_url is None:
            return
        if generation.api_key_id is None or not await self._keys.webhook_secret(generation.api_key_id):
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                "callback_url needs an API key with a webhook secret; keys made before webhooks have none: create "
                "a new key in the admin UI (its webhook secret is shown once, beside the key's secret)",
                field=FIELD,
            )
        try:
            url = httpx.URL(generation.callback_url)
        except httpx.InvalidURL as exc:
            raise HubError(ErrorCode.INVALID_REQUEST, f"callback_url is not a valid URL ({exc})", field=FIELD) from None
        await checked_address(url, self._allow, field=FIELD, variable=ALLOW_VARIABLE)

    async def handle(self, event: GenerationEvent) -> Retry | None:
        """One generation event (each job's in stream order): an `accepted` one with a callback records the job's
        delivery row, a final one is POSTed (Retry: not delivered yet, try again after the delay)."""
        if isinstance(event, JobAccepted) and event.request.callback_url:
            await self._record(event)
        elif isinstance(event, JobProgress):
            await self._deliver_progress(event)
        elif isinstance(event, FINAL_EVENTS):
            # Part of the job's trace: the final event carries its context.
            with tracing.span("webhook.deliver", kind="consumer", parent=message_headers(), job_id=event.job_id):
                delay = await self._deliver(event)
            if delay is not None:
                return Retry(delay)
        return None

    async def _record(self, event: JobAccepted) -> None:
        row = WebhookRow(
            job_id=event.job_id,
            key_id=event.request.api_key_id or "",
            url=event.request.callback_url,
            created_at=time.time(),
            progress=event.request.callback_progress,
        )
        await WebhookRow.insert(row).on_conflict(action="DO NOTHING")  # a re-delivered `accepted` event

    async def _deliver_progress(self, event: JobProgress) -> None:
        """POSTs a progress step once, if asked and nothing later (nor the final state) was sent: a lost step is
        not retried, the next one (at least every second) says more."""
        row = await WebhookRow.select().where(WebhookRow.job_id == event.job_id).first()
        if row is None or not row["progress"] or row["attempts"] > 0 or event.seq <= row["last_seq"]:
            return
        secret = await self._keys.webhook_secret(row["key_id"])
        status, error = await self._post(row["url"], secret, event)
        if error:
            self._log.info("webhook progress step not delivered", job_id=event.job_id, status=status, error=error)
        await WebhookRow.update({WebhookRow.last_seq: event.seq}).where(
            (WebhookRow.job_id == event.job_id) & (WebhookRow.attempts == 0)
        )

    async def _deliver(self, event: Any) -> float | None:
        """POSTs the final state; the delay before the next attempt, or None when done (delivered or given up)."""
        row = await WebhookRow.select().where(WebhookRow.job_id == event.job_id).first()
        if row is None or row["delivered_at"] is not None or row["gave_up_at"] is not None:
            return None
        secret = await self._keys.webhook_secret(row["key_id"])
        status, error = await self._post(row["url"], secret, event)
        attempts = row["attempts"] + 1
        now = time.time()
        update: dict[Any, Any] = {WebhookRow.attempts: attempts, WebhookRow.last_status: status}
        update[WebhookRow.last_seq] = event.seq
        update[WebhookRow.last_error] = error
        delay: float | None = None
        if status is not None and 200 <= status < 300:
            update[WebhookRow.delivered_at] = now
            self.delivered += 1
        elif attempts >= len(RETRY_DELAYS_S):
            update[WebhookRow.gave_up_at] = now
            self._log.warning("webhook given up", job_id=event.job_id, attempts=attempts, error=error)
        else:
            delay = RETRY_DELAYS_S[attempts - 1]
        await WebhookRow.update(update).where(WebhookRow.job_id == event.job_id)
        return delay

    async def _post(self, raw_url: str, secret: str, event: Any) -> tuple[int | None, str]:
        """The receiver's status (None when it did not answer) and what went wrong ("" for a 2xx)."""
        body = webhook_body(event)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Webhook-Id": event.event_id,  # the same on every attempt: receivers de-duplicate on it
            "Webhook-Timestamp": str(timestamp),
            "Webhook-Signature": signature(secret, event.event_id, timestamp, body),
        }
        try:
            url = httpx.URL(raw_url)
            address = await checked_address(url, self._allow, field=FIELD, variable=ALLOW_VARIABLE)
            async with httpx.AsyncClient(timeout=POST_TIMEOUT_S, follow_redirects=False) as client:
                request = pinned_request(client, url, address, method="POST", content=body, headers=headers)
                response = await client.send(request)
        except (HubError, httpx.HTTPError) as exc:
            return None, str(exc) or type(exc).__name__
        ok = 200 <= response.status_code < 300
        return response.status_code, "" if ok else f"HTTP {response.status_code}"


async def delivery_of(job_id: str) -> WebhookDelivery | None:
    """The job's webhook delivery, or None when it named no callback_url (or its `accepted` event is not read yet)."""
    row = await WebhookRow.select().where(WebhookRow.job_id == job_id).first()
    return None if row is None else msgspec.convert(row, WebhookDelivery, strict=False)
