"""Webhooks: a job submitted with a `callback_url`, and every job of an API key that has webhook URLs (set in the
admin UI), gets its final state POSTed there, signed with its API key's webhook secret (Standard Webhooks:
`Webhook-Id`, `Webhook-Timestamp`, `Webhook-Signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`).

Delivered by the gateway because it owns the API keys and so the signing secrets (no secret crosses NATS). The
dispatcher copies the events webhooks need of the jobs that have any (a callback_url, or a key that had webhook URLs
at submit: the gateway says so in `GenerationRequest.key_webhooks`) to `hub.events.webhook.<job_id>`. A durable
JetStream consumer of those copies, shared by every gateway replica: an `accepted` event records
a delivery row per webhook of the job (its callback, its key's URLs); its final event is POSTed to each,
acknowledged only once every receiver answered 2xx (or got its last attempt), and otherwise re-delivered by
JetStream after a growing delay (only the webhooks not yet delivered are POSTed again), so a restart or a receiver
outage loses no webhook. The URLs go through the same address checks as input image URLs
(contracts.runtime.outbound_url: public addresses only unless allowed in HUB_INPUT_URL_ALLOW), when named (at submit,
when a key's URLs are set) and again at each attempt (pinned to the checked address); redirects are not followed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any, Final

import httpx
import msgspec
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.errors import ErrorCode, HubError
from contracts.messages import events
from contracts.messages.jobs import GenerationRequest
from contracts.messages.keys import KeyWebhooks, SetKeyWebhooks, WebhookDelivery
from contracts.runtime import tracing
from contracts.runtime.consumers import Durable, Retry, message_headers
from contracts.runtime.outbound_url import UrlAllowlist, checked_address, pinned_request
from contracts.runtime.service import ServiceRuntime
from contracts.streams import EVENTS, EVENTS_STREAM, WEBHOOK_EVENTS_SUBJECTS, job_of_event_subject
from gateway.store import WEBHOOK_SECRET_PREFIX, ApiKeyStore, WebhookRecord, WebhookStore

FIELD = "callback_url"
KEY_URLS_FIELD = "urls"  # of SetKeyWebhooks
ALLOW_VARIABLE = "HUB_INPUT_URL_ALLOW"
CONSUMER_NAME = "hub-gateway-webhook-deliveries"
# The consumer of every generation event that fed webhooks before the copies (WEBHOOK_EVENTS_SUBJECTS): removed at
# start, so the server does not keep it (and the events it would count as pending) for nobody.
FORMER_CONSUMER_NAME = "hub-gateway-webhooks"
FINAL_EVENTS: tuple[type, ...] = (events.JobCompleted, events.JobFailed, events.JobCancelled)
# Delay before attempt n+1 after n failed attempts; after the last one the delivery is given up (recorded).
RETRY_DELAYS_S: tuple[float, ...] = (1, 2, 5, 30, 120, 600, 1800, 3600)
POST_TIMEOUT_S = 10.0

DELIVERIES: Final = Durable[events.GenerationEvent](
    name=CONSUMER_NAME,
    stream=EVENTS,
    message=events.GenerationEvent,
    description="gateway: POSTs the final state of jobs to their callback_url and their API key's webhook URLs",
    # Only the copies of the events of jobs with webhooks (accepted, progress, final: see wants_webhooks).
    filter_subject=WEBHOOK_EVENTS_SUBJECTS,
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
    # As the stats consumer: after a batch that did not fill, gather for a moment, so a steady stream of jobs is
    # fetched in fewer, fuller batches (a webhook goes out at most this much later).
    gather_s=0.25,
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


def delivery_id(job_id: str, source: str, url: str) -> str:
    """The row of one webhook of a job: its callback, or one URL of its key (named by a digest: URLs are long)."""
    if source == "callback":
        return f"{job_id} callback"
    return f"{job_id} key {hashlib.sha256(url.encode()).hexdigest()[:16]}"


class Webhooks:
    """Checks a callback at submit and a key's webhook URLs when set; delivers the final states (`handle`, fed by
    the DELIVERIES consumer)."""

    def __init__(self, runtime: ServiceRuntime, keys: ApiKeyStore, allow: UrlAllowlist) -> None:
        self._keys = keys
        self._deliveries = WebhookStore()
        self._allow = allow
        self._log = runtime.log.bind(consumer=CONSUMER_NAME)
        self._attempts = runtime.metrics.counter(
            "webhook_deliveries_total", "Attempts at POSTing a job's final state to a webhook", ("source", "outcome")
        )

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
        await self._checked(generation.callback_url, FIELD)

    async def _checked(self, raw_url: str, field: str) -> None:
        """Refuses a URL the hub would not POST to (the outbound rules of input image URLs)."""
        try:
            url = httpx.URL(raw_url)
        except httpx.InvalidURL as exc:
            raise HubError(
                ErrorCode.INVALID_REQUEST, f"{field}: {raw_url!r} is not a valid URL ({exc})", field=field
            ) from None
        await checked_address(url, self._allow, field=field, variable=ALLOW_VARIABLE)

    async def set_key_webhooks(self, req: SetKeyWebhooks) -> KeyWebhooks:
        """The NATS handler (admin UI): a key's webhook URLs, each checked as a callback_url is."""
        urls = list(dict.fromkeys(url.strip() for url in req.urls if url.strip()))  # in order, each once
        for url in urls:
            await self._checked(url, KEY_URLS_FIELD)
        return await self._keys.set_webhooks(req.key_id, urls, req.progress)

    async def handle(self, event: events.GenerationEvent) -> Retry | None:
        """One generation event (each job's in stream order): an `accepted` one records a delivery row per webhook
        of the job, a final one is POSTed to each (Retry: not all delivered yet, try again after the delay)."""
        if isinstance(event, events.JobAccepted):
            await self._record(event)
        elif isinstance(event, events.JobProgress):
            await self._deliver_progress(event)
        elif isinstance(event, FINAL_EVENTS):
            # Part of the job's trace: the final event carries its context.
            with tracing.span("webhook.deliver", kind="consumer", parent=message_headers(), job_id=event.job_id):
                delay = await self._deliver(event)
            if delay is not None:
                return Retry(delay)
        return None

    async def _record(self, event: events.JobAccepted) -> None:
        """A delivery row per webhook of the job: its callback_url, and each webhook URL its key has now (none when the
        key's URLs were removed since the job was submitted: its later events then find no row)."""
        request = event.request
        key_id = request.api_key_id or ""
        targets: dict[str, tuple[str, bool]] = {}  # url -> (source, progress); a URL named twice is POSTed once
        if request.callback_url:
            targets[request.callback_url] = ("callback", request.callback_progress)
        if key_id:
            urls, progress = await self._keys.key_webhooks(key_id)
            for url in urls:
                targets.setdefault(url, ("key", progress))
        if not targets:
            return
        deliveries = [
            WebhookRecord(
                delivery_id=delivery_id(event.job_id, source, url),
                job_id=event.job_id,
                key_id=key_id,
                url=url,
                source=source,
                created_at=time.time(),
                progress=progress,
            )
            for url, (source, progress) in targets.items()
        ]
        await self._deliveries.add(deliveries)  # a re-delivered `accepted` event adds nothing

    async def _deliver_progress(self, event: events.JobProgress) -> None:
        """POSTs a progress step once to each webhook that asked for them, unless something later (or the final
        state) was sent there: a lost step is not retried, the next one (at least every second) says more."""
        rows = await self._deliveries.wanting_progress(event.job_id, event.seq)
        await asyncio.gather(*(self._deliver_progress_to(row, event) for row in rows))

    async def _deliver_progress_to(self, row: WebhookRecord, event: events.JobProgress) -> None:
        secret = await self._keys.webhook_secret(row.key_id)
        status, error = await self._post(row.url, secret, event)
        if error:
            self._log.info("webhook progress step not delivered", url=row.url, status=status, error=error)
        await self._deliveries.progress_sent(row.delivery_id, event.seq)

    async def _deliver(self, event: Any) -> float | None:
        """POSTs the final state to each webhook of the job not yet done with; the delay before the next attempt
        at those that failed, or None when all are done (delivered or given up)."""
        rows = await self._deliveries.undone(event.job_id)
        delays = await asyncio.gather(*(self._deliver_to(row, event) for row in rows))
        waiting = [delay for delay in delays if delay is not None]
        return min(waiting) if waiting else None

    async def _deliver_to(self, row: WebhookRecord, event: Any) -> float | None:
        secret = await self._keys.webhook_secret(row.key_id)
        status, error = await self._post(row.url, secret, event)
        attempts = row.attempts + 1
        now = time.time()
        attempt = msgspec.structs.replace(row, attempts=attempts, last_status=status, last_seq=event.seq)
        attempt.last_error = error
        delay: float | None = None
        if status is not None and 200 <= status < 300:
            attempt.delivered_at = now
            outcome = "delivered"
        elif attempts >= len(RETRY_DELAYS_S):
            attempt.gave_up_at = now
            self._log.warning("webhook given up", url=row.url, attempts=attempts, error=error)
            outcome = "given_up"
        else:
            delay = RETRY_DELAYS_S[attempts - 1]
            outcome = "retrying"
        self._attempts.labels(row.source, outcome).inc()
        await self._deliveries.attempted(attempt)
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


async def remove_former_consumer(runtime: ServiceRuntime) -> None:
    """At start: the consumer of every event that fed webhooks before their copies is removed if it is still there
    (best effort: a server that cannot say now is asked again at the next start)."""
    try:
        await runtime.nc.jetstream().delete_consumer(EVENTS_STREAM, FORMER_CONSUMER_NAME)
        runtime.log.info("removed the former webhook consumer", consumer=FORMER_CONSUMER_NAME)
    except NotFoundError:
        pass
    except Exception as exc:
        runtime.log.warning("could not remove the former webhook consumer", error=str(exc) or type(exc).__name__)


async def deliveries_of(job_id: str) -> list[WebhookDelivery]:
    """The job's webhook deliveries (its callback_url first, then its key's URLs); none when it has no webhook (or
    its `accepted` event is not read yet)."""
    deliveries = await WebhookStore().of_job(job_id)
    return [msgspec.convert(msgspec.structs.asdict(d), WebhookDelivery, strict=False) for d in deliveries]
