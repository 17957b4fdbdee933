"""Idempotency keys: a caller's retry of a submission whose answer it never got makes no second job.

A caller may name a submission with a UUID of its choosing (REST: the `Idempotency-Key` header; MCP
generate_image: the `idempotency_key` argument). The first submission with a key records the job id it is given,
and the same key (for the same API key, within KEPT_S) submits under that job id again: the dispatcher answers
with the job it made first, whichever of gateway or dispatcher died before the first answer came back. The same
key with a different request is refused (CONFLICT), naming the key.

Kept in a NATS KV bucket, not in the gateway's database: every gateway replica sees the same keys (a retry may
reach another replica), an atomic create settles two concurrent first submissions, and the bucket's TTL forgets
keys after KEPT_S without a sweeper.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from typing import Final

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import GenerationRequest
from contracts.runtime.bus import KvStore
from contracts.streams import BucketSpec

BUCKET = "hub-idempotency"
KEPT_S = 24 * 3600
IDEMPOTENCY_KEYS: Final = BucketSpec(
    name=BUCKET, ttl_s=KEPT_S, description="Idempotency keys of submissions: the job id each one was given"
)
UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
HEADER = "Idempotency-Key"


# A submission refused for what it asked (nothing was made): its key is freed for the corrected request.
REFUSALS = frozenset({ErrorCode.INVALID_REQUEST, ErrorCode.INCOMPATIBLE, ErrorCode.NOT_FOUND})


class Claim(msgspec.Struct, frozen=True):
    job_id: str
    kv_key: str
    revision: int | None  # set when this submission is the key's first: it may free the key again


class _Recorded(msgspec.Struct, frozen=True):
    fingerprint: str  # of the request first submitted with the key
    job_id: str


def check_key(key: str, field: str) -> None:
    """A key is a UUID (a new one for each new request), so two different requests never share one by chance."""
    if not UUID_PATTERN.fullmatch(key):
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"{field} must be a UUID such as {uuid.uuid4()} (got {key[:64]!r}); send a new one for each new request",
            field=field,
        )


def _fingerprint(request: GenerationRequest) -> str:
    # The door (client_name, and the inline previews the MCP door asks for) and the key's limits and webhook URLs at
    # the time do not make a request different; the job id is what the key decides.
    same = msgspec.structs.replace(
        request,
        job_id=None,
        client_name=None,
        max_waiting=None,
        max_running=None,
        weight=None,
        inline_previews=False,
        key_webhooks=False,
    )
    return hashlib.sha256(msgspec.json.encode(same)).hexdigest()


class IdempotencyKeys(KvStore):
    bucket_spec = IDEMPOTENCY_KEYS  # opened on first use

    async def claim(self, request: GenerationRequest, key: str, field: str) -> Claim:
        """The job id to submit `request` under: the one the first submission with `key` got, or a new one."""
        check_key(key, field)
        scope = request.api_key_id or "-"  # keys are the caller's own: scoped to its API key
        kv_key = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
        fingerprint = _fingerprint(request)
        kv = await self._bucket()
        while True:
            try:
                recorded = msgspec.json.decode((await kv.get(kv_key)).value or b"", type=_Recorded)
            except KeyNotFoundError:
                job_id = uuid.uuid4().hex
                try:
                    revision = await kv.create(kv_key, msgspec.json.encode(_Recorded(fingerprint, job_id)))
                except KeyWrongLastSequenceError:
                    continue  # a concurrent submission with the same key came first: take its job id
                return Claim(job_id, kv_key, revision)
            if recorded.fingerprint != fingerprint:
                raise HubError(
                    ErrorCode.CONFLICT,
                    f"{field} {key!r} was used for a different request by this API key within the last "
                    f"{KEPT_S // 3600} h (job {recorded.job_id}); send a new {field} for a new request",
                    field=field,
                )
            return Claim(recorded.job_id, kv_key, None)

    async def free(self, claim: Claim) -> None:
        """The first submission with a key was refused (REFUSALS): the key may be used again, as Stripe does."""
        if claim.revision is not None:
            with contextlib.suppress(KeyWrongLastSequenceError):
                await (await self._bucket()).delete(claim.kv_key, last=claim.revision)
