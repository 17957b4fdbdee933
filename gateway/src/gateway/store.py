"""The gateway's storage, its API keys: creation (the secret is shown once), listing, revocation and checking a
presented secret; and the webhook deliveries of jobs. The only module that reads or writes the gateway's tables;
rows become `ApiKeyRecord` and `WebhookRecord` Structs.

A secret is `ghub_` + 32 random URL-safe characters (192 bits); the database keeps only its SHA-256, so a
leaked database gives no usable key. A fast hash is right here: the secret is random, not a password.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any

import msgspec
from piccolo.columns import Column

from contracts.errors import ErrorCode, HubError
from contracts.messages.base import struct_from
from contracts.messages.keys import SCOPES, ApiKey, ApiKeyList, CreatedApiKey, KeyDefaults, KeyLimits, KeyWebhooks
from contracts.runtime.database import write_transaction
from gateway.tables import ApiKeyRow, KeyDefaultsRow, WebhookRow

SECRET_PREFIX = "ghub_"
WEBHOOK_SECRET_PREFIX = "whsec_"
DISPLAY_PREFIX_LENGTH = len(SECRET_PREFIX) + 6
# last_used_at is written at most this often per key, so a busy key does not cost a write per call.
LAST_USED_RESOLUTION_S = 60.0
# A key read from the table is trusted this long without reading it again (a busy client costs no query per
# request). A change to a key (revoked, new limits or webhooks) drops it at once on the replica that made the change
# and, by the Gateway.KEYS_CHANGED announcement, on every other replica; this bound covers a lost announcement.
KEY_CACHE_S = 2.0
KEY_CACHE_SIZE = 10_000  # keys held at most (emptied when full: a flood of keys costs memory, not correctness)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes (the HMAC key)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    """A stored key, without its secret's hash (`scopes` space-separated, as in the table)."""

    key_id: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    scopes: str = ""
    max_waiting: int | None = None
    max_images_per_job: int | None = None
    max_running: int | None = None
    weight: int | None = None
    webhook_urls: str = ""  # one URL a line, as in the table
    webhook_progress: bool = False


RECORD_COLUMNS = tuple(getattr(ApiKeyRow, f.name) for f in msgspec.structs.fields(ApiKeyRecord))


async def _find(*where: Any) -> ApiKeyRecord | None:
    row = await ApiKeyRow.select(*RECORD_COLUMNS).where(*where).first()
    return None if row is None else msgspec.convert(row, ApiKeyRecord)


def _to_key(record: ApiKeyRecord) -> ApiKey:
    return struct_from(
        ApiKey,
        record,
        scopes=record.scopes.split(),
        limits=struct_from(KeyLimits, record),
        webhook_urls=record.webhook_urls.split(),
    )


def _not_found(key_id: str) -> HubError:
    return HubError(ErrorCode.NOT_FOUND, f"no API key `{key_id}`; list the keys to find its id", field="key_id")


def _checked_scopes(scopes: list[str]) -> list[str]:
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"unknown scope `{unknown[0]}`; scopes: {', '.join(SCOPES)}",
            field="scopes",
            details={"valid": list(SCOPES)},
        )
    return sorted(set(scopes))


class _KeyCache:
    """Active keys read recently, by their secret's hash and by key id (see KEY_CACHE_S)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, ApiKeyRecord]] = {}  # hash or key id -> (read at, record)
        self._changes = 0  # keys forgotten so far: a read that overlapped a change is not kept

    def get(self, name: str) -> ApiKeyRecord | None:
        entry = self._entries.get(name)
        if entry is None or time.monotonic() - entry[0] >= KEY_CACHE_S:
            return None
        return entry[1]

    def mark(self) -> int:
        """Taken before a read: `keep` keeps what the read found only if no key changed meanwhile."""
        return self._changes

    def keep(self, names: tuple[str, ...], record: ApiKeyRecord, mark: int) -> None:
        if mark != self._changes:
            return
        if len(self._entries) >= KEY_CACHE_SIZE:
            self._entries.clear()
        for name in names:
            self._entries[name] = (time.monotonic(), record)

    def forget(self, key_id: str) -> None:
        self._changes += 1
        self._entries = {name: entry for name, entry in self._entries.items() if entry[1].key_id != key_id}


class ApiKeyStore:
    def __init__(self, *, clock: Any = time.time) -> None:
        self._clock = clock
        self._last_written: dict[str, float] = {}  # key_id -> last_used_at written by this replica
        self._cache = _KeyCache()

    def forget(self, key_id: str) -> None:
        """Read the key from the table again at its next use: it changed (here or on another replica)."""
        self._cache.forget(key_id)

    async def create(
        self, name: str, scopes: list[str] | None = None, limits: KeyLimits | None = None
    ) -> CreatedApiKey:
        name = name.strip()
        if not name:
            raise HubError(
                ErrorCode.INVALID_REQUEST, "`name` must not be blank; name the key after its user", field="name"
            )
        granted = _checked_scopes(scopes or [])
        if limits is None:
            limits = (await self.defaults()).limits
        secret = SECRET_PREFIX + secrets.token_urlsafe(24)  # 24 bytes -> 32 URL-safe characters
        record = ApiKeyRecord(
            key_id="key_" + secrets.token_hex(8),
            name=name,
            prefix=secret[:DISPLAY_PREFIX_LENGTH],
            created_at=self._clock(),
            scopes=" ".join(granted),
            **msgspec.structs.asdict(limits),
        )
        webhook_secret = new_webhook_secret()
        row = ApiKeyRow(
            secret_hash=hash_secret(secret), webhook_secret=webhook_secret, **msgspec.structs.asdict(record)
        )
        await ApiKeyRow.insert(row)
        return CreatedApiKey(key=_to_key(record), secret=secret, webhook_secret=webhook_secret)

    async def webhook_secret(self, key_id: str) -> str:
        """The key's webhook signing secret; "" when the key has none (made before webhooks) or does not exist."""
        row = await ApiKeyRow.select(ApiKeyRow.webhook_secret).where(ApiKeyRow.key_id == key_id).first()
        return "" if row is None else str(row["webhook_secret"])

    async def key_webhooks(self, key_id: str) -> tuple[list[str], bool]:
        """The webhook URLs of a key and whether they get progress steps (none for an unknown key)."""
        record = self._cache.get(key_id)
        if record is None:
            mark = self._cache.mark()
            record = await _find(ApiKeyRow.key_id == key_id)
            if record is None:
                return [], False
            self._cache.keep((key_id,), record, mark)
        return record.webhook_urls.split(), record.webhook_progress

    async def set_webhooks(self, key_id: str, urls: list[str], progress: bool) -> KeyWebhooks:
        """Replace the key's webhook URLs (checked by the caller). A key made before webhooks gets its first signing
        secret now, returned this once."""
        async with write_transaction(ApiKeyRow._meta.db):
            record = await _find(ApiKeyRow.key_id == key_id)
            if record is None or record.revoked_at is not None:
                raise HubError(
                    ErrorCode.NOT_FOUND, f"no active API key `{key_id}`; list the keys to find its id", field="key_id"
                )
            update: dict[Any, Any] = {ApiKeyRow.webhook_urls: "\n".join(urls), ApiKeyRow.webhook_progress: progress}
            new_secret = "" if await self.webhook_secret(key_id) else new_webhook_secret()
            if new_secret:
                update[ApiKeyRow.webhook_secret] = new_secret
            await ApiKeyRow.update(update).where(ApiKeyRow.key_id == key_id)
        self.forget(key_id)
        record.webhook_urls, record.webhook_progress = "\n".join(urls), progress
        return KeyWebhooks(key=_to_key(record), webhook_secret=new_secret)

    async def list(self, *, include_revoked: bool = False) -> ApiKeyList:
        query = ApiKeyRow.select(*RECORD_COLUMNS).order_by(ApiKeyRow.created_at)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_null())
        return ApiKeyList(keys=[_to_key(record) for record in msgspec.convert(await query, list[ApiKeyRecord])])

    async def revoke(self, key_id: str) -> ApiKey:
        async with write_transaction(ApiKeyRow._meta.db):
            record = await _find(ApiKeyRow.key_id == key_id)
            if record is None:
                raise _not_found(key_id)
            if record.revoked_at is None:  # revoking twice keeps the first time
                record.revoked_at = self._clock()
                await ApiKeyRow.update({ApiKeyRow.revoked_at: record.revoked_at}).where(ApiKeyRow.key_id == key_id)
        self.forget(key_id)
        return _to_key(record)

    async def set_limits(self, key_id: str, limits: KeyLimits) -> ApiKey:
        """New limits for a key (revoked or not: a revoked key's are history, kept as set)."""
        changes: dict[Column | str, Any] = {
            getattr(ApiKeyRow, name): value for name, value in msgspec.structs.asdict(limits).items()
        }
        async with write_transaction(ApiKeyRow._meta.db):
            record = await _find(ApiKeyRow.key_id == key_id)
            if record is None:
                raise _not_found(key_id)
            await ApiKeyRow.update(changes).where(ApiKeyRow.key_id == key_id)
        self.forget(key_id)
        return _to_key(msgspec.structs.replace(record, **msgspec.structs.asdict(limits)))

    async def defaults(self) -> KeyDefaults:
        row = await KeyDefaultsRow.select(KeyDefaultsRow.limits, KeyDefaultsRow.updated_at).first()
        if row is None:
            return KeyDefaults()
        # A limit added to KeyLimits since the row was written is absent from it: no limit.
        return KeyDefaults(limits=msgspec.json.decode(row["limits"], type=KeyLimits), updated_at=row["updated_at"])

    async def set_defaults(self, limits: KeyLimits) -> KeyDefaults:
        encoded, now = msgspec.json.encode(limits).decode(), self._clock()
        async with write_transaction(KeyDefaultsRow._meta.db):
            if await KeyDefaultsRow.exists().run():
                changes: dict[Column | str, Any] = {KeyDefaultsRow.limits: encoded, KeyDefaultsRow.updated_at: now}
                await KeyDefaultsRow.update(changes, force=True)
            else:
                await KeyDefaultsRow.insert(KeyDefaultsRow(limits=encoded, updated_at=now))
        return await self.defaults()

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None; records when it was used (throttled)."""
        if not secret.startswith(SECRET_PREFIX):
            return None
        digest = hash_secret(secret)
        record = self._cache.get(digest)
        if record is None:
            mark = self._cache.mark()
            record = await _find(ApiKeyRow.secret_hash == digest)
            if record is None or record.revoked_at is not None:
                return None
            self._cache.keep((digest, record.key_id), record, mark)
        now = self._clock()
        last = max(record.last_used_at or 0.0, self._last_written.get(record.key_id, 0.0))
        if now - last >= LAST_USED_RESOLUTION_S:
            self._last_written[record.key_id] = now
            await ApiKeyRow.update({ApiKeyRow.last_used_at: now}).where(ApiKeyRow.key_id == record.key_id)
            record.last_used_at = now
        return _to_key(record)


class WebhookRecord(msgspec.Struct, kw_only=True):
    """One webhook of a job and how its delivery went (a row of webhook_deliveries, see tables.WebhookRow)."""

    delivery_id: str
    job_id: str
    key_id: str
    url: str
    source: str  # "callback" or "key"
    created_at: float
    attempts: int = 0
    last_status: int | None = None
    last_error: str = ""
    delivered_at: float | None = None
    gave_up_at: float | None = None
    progress: bool = False
    last_seq: int = 0


def _webhooks(rows: list[dict[str, Any]]) -> list[WebhookRecord]:
    return [msgspec.convert(row, WebhookRecord, strict=False) for row in rows]


class WebhookStore:
    """The webhook deliveries of jobs: recorded when a job is accepted, updated at each attempt."""

    async def add(self, deliveries: list[WebhookRecord]) -> None:
        """Records the deliveries; one already recorded (a re-delivered `accepted` event) is left as it is."""
        if deliveries:
            rows = [WebhookRow(**msgspec.structs.asdict(delivery)) for delivery in deliveries]
            await WebhookRow.insert(*rows).on_conflict(action="DO NOTHING")

    async def of_job(self, job_id: str) -> list[WebhookRecord]:
        """Its callback_url first, then its key's URLs, each in the order they were recorded."""
        query = WebhookRow.select().where(WebhookRow.job_id == job_id)
        return _webhooks(await query.order_by(WebhookRow.source, WebhookRow.created_at))

    async def wanting_progress(self, job_id: str, seq: int) -> list[WebhookRecord]:
        """The job's webhooks that asked for progress steps, have had no final state and no step from `seq` on."""
        return _webhooks(
            await WebhookRow.select().where(
                (WebhookRow.job_id == job_id)
                & (WebhookRow.progress == True)  # noqa: E712 (a piccolo column comparison, not a Python one)
                & (WebhookRow.attempts == 0)
                & (WebhookRow.last_seq < seq)
            )
        )

    async def progress_sent(self, delivery_id: str, seq: int) -> None:
        """A progress step was POSTed (unless the final state was, meanwhile)."""
        await WebhookRow.update({WebhookRow.last_seq: seq}).where(
            (WebhookRow.delivery_id == delivery_id) & (WebhookRow.attempts == 0)
        )

    async def undone(self, job_id: str) -> list[WebhookRecord]:
        """The job's webhooks neither delivered nor given up."""
        return _webhooks(
            await WebhookRow.select().where(
                (WebhookRow.job_id == job_id) & WebhookRow.delivered_at.is_null() & WebhookRow.gave_up_at.is_null()
            )
        )

    async def attempted(self, delivery: WebhookRecord) -> None:
        """Stores how an attempt at the final state went (attempts, status, error, seq, delivered or given up)."""
        changed: dict[Column | str, Any] = {
            WebhookRow.attempts: delivery.attempts,
            WebhookRow.last_status: delivery.last_status,
            WebhookRow.last_seq: delivery.last_seq,
            WebhookRow.last_error: delivery.last_error,
            WebhookRow.delivered_at: delivery.delivered_at,
            WebhookRow.gave_up_at: delivery.gave_up_at,
        }
        await WebhookRow.update(changed).where(WebhookRow.delivery_id == delivery.delivery_id)
