"""gateway: API keys (only a hash of the secret is stored; the secret is shown once, at creation) and the webhook
delivery of a job."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.messages.base import Record, Request

# A key sees and cancels only the jobs it made. A scope widens that, and only where an admin sets it (UI).
READ_ALL_JOBS = "jobs:read-all"
SCOPES: dict[str, str] = {
    READ_ALL_JOBS: "reads every job (status, prompt, events), e.g. for a monitoring client; cancels only its own",
}


class KeyLimits(Record):
    """What one key may ask of the hub; None: no limit. Set by an admin when the key is created (UI)."""

    max_waiting: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None  # jobs queued, not yet running
    max_images_per_job: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None  # a request's `count`
    max_running: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None  # jobs running at once
    # Fair share between keys: a key of weight 3 gets three times the run time of a key of weight 1 while both
    # have jobs waiting. None: weight 1.
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None


class ApiKey(Record):
    key_id: str
    name: str
    prefix: str  # the first characters of the secret, so an admin can tell keys apart
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    scopes: list[str] = msgspec.field(default_factory=list)  # names from SCOPES
    limits: KeyLimits = msgspec.field(default_factory=KeyLimits)
    # Every job of this key POSTs its final state to each of these (and each progress step with webhook_progress).
    webhook_urls: list[str] = msgspec.field(default_factory=list)
    webhook_progress: bool = False


class ApiKeyList(Record):
    keys: list[ApiKey]


class ListApiKeys(Request):
    include_revoked: bool = False


class CreateApiKey(Request):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    scopes: list[str] = msgspec.field(default_factory=list)  # names from SCOPES
    limits: KeyLimits | None = None  # None: the defaults for new keys (KeyDefaults)


class SetApiKeyLimits(Request):
    """Change the limits of an existing key; they hold from its next request (a job already waiting keeps the
    limits it was submitted with)."""

    key_id: str
    limits: KeyLimits


class KeyDefaults(Record):
    """The limits a new key gets when its creation names none (the UI fills its form with them)."""

    limits: KeyLimits = msgspec.field(default_factory=KeyLimits)
    updated_at: float | None = None


class GetKeyDefaults(Request):
    pass


class SetKeyDefaults(Request):
    limits: KeyLimits


class CreatedApiKey(Record):
    key: ApiKey
    secret: str  # shown once
    webhook_secret: str = ""  # shown once: verifies the signature of the webhooks this key's jobs send


class RevokeApiKey(Request):
    key_id: str


# Most webhook URLs one key may have: each job of the key is POSTed to every one.
MAX_KEY_WEBHOOK_URLS = 5
WebhookUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class SetKeyWebhooks(Request):
    """Set (replace) the webhook URLs of a key; an empty list stops them."""

    key_id: str
    urls: Annotated[list[WebhookUrl], msgspec.Meta(max_length=MAX_KEY_WEBHOOK_URLS)] = msgspec.field(
        default_factory=list
    )
    progress: bool = False  # each progress step too, not only the final state


class KeyWebhooks(Record):
    key: ApiKey
    webhook_secret: str = ""  # set only when this call made the key its first signing secret: shown once


class WebhookDelivery(Record):
    """How one webhook of a job went: its callback_url, or one of its API key's webhook URLs."""

    url: str
    source: Annotated[
        str, msgspec.Meta(description="`callback` (the job's callback_url) or `key` (a webhook URL of its API key)")
    ] = "callback"
    attempts: int = 0  # attempts at the final state
    last_status: Annotated[int | None, msgspec.Meta(description="The receiver's HTTP status; null: no answer")] = None
    last_error: str = ""
    delivered_at: float | None = None
    gave_up_at: Annotated[float | None, msgspec.Meta(description="Set after the last attempt failed")] = None


class GetWebhookDelivery(Request):
    job_id: str


class WebhookDeliveryReply(Record):
    deliveries: list[WebhookDelivery] = msgspec.field(default_factory=list)  # none: no webhook for this job
