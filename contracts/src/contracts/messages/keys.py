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


class WebhookDelivery(Record):
    """How a job's webhook (its callback_url) went."""

    url: str
    attempts: int = 0  # attempts at the final state
    last_status: Annotated[int | None, msgspec.Meta(description="The receiver's HTTP status; null: no answer")] = None
    last_error: str = ""
    delivered_at: float | None = None
    gave_up_at: Annotated[float | None, msgspec.Meta(description="Set after the last attempt failed")] = None


class GetWebhookDelivery(Request):
    job_id: str


class WebhookDeliveryReply(Record):
    delivery: WebhookDelivery | None = None  # None: the job named no callback_url
