"""API keys: creation (the secret is shown once), listing, revocation and checking a presented secret.

A secret is `ghub_` + 32 random URL-safe characters (192 bits); the database keeps only its SHA-256, so a
leaked database gives no usable key. A fast hash is right here: the secret is random, not a password.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from contracts.errors import ErrorCode, HubError
from contracts.messages.keys import SCOPES, ApiKey, ApiKeyList, CreatedApiKey
from contracts.runtime.database import write_transaction
from gateway.tables import ApiKeyRow

SECRET_PREFIX = "ghub_"
DISPLAY_PREFIX_LENGTH = len(SECRET_PREFIX) + 6
# last_used_at is written at most this often per key, so a busy key does not cost a write per call.
LAST_USED_RESOLUTION_S = 60.0


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _to_key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        scopes=row["scopes"].split(),
    )


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


class ApiKeyStore:
    def __init__(self, *, clock: Any = time.time) -> None:
        self._clock = clock
        self._last_written: dict[str, float] = {}  # key_id -> last_used_at written by this replica

    async def create(self, name: str, scopes: list[str] | None = None) -> CreatedApiKey:
        name = name.strip()
        if not name:
            raise HubError(
                ErrorCode.INVALID_REQUEST, "`name` must not be blank; name the key after its user", field="name"
            )
        granted = _checked_scopes(scopes or [])
        secret = SECRET_PREFIX + secrets.token_urlsafe(24)  # 24 bytes -> 32 URL-safe characters
        row = {
            "key_id": "key_" + secrets.token_hex(8),
            "name": name,
            "prefix": secret[:DISPLAY_PREFIX_LENGTH],
            "created_at": self._clock(),
            "last_used_at": None,
            "revoked_at": None,
            "scopes": " ".join(granted),
        }
        await ApiKeyRow.insert(ApiKeyRow(secret_hash=hash_secret(secret), **row))
        return CreatedApiKey(key=_to_key(row), secret=secret)

    async def list(self, *, include_revoked: bool = False) -> ApiKeyList:
        query = ApiKeyRow.select().order_by(ApiKeyRow.created_at)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_null())
        return ApiKeyList(keys=[_to_key(row) for row in await query])

    async def revoke(self, key_id: str) -> ApiKey:
        async with write_transaction(ApiKeyRow._meta.db):
            row = await ApiKeyRow.select().where(ApiKeyRow.key_id == key_id).first()
            if row is None:
                raise HubError(
                    ErrorCode.NOT_FOUND, f"no API key `{key_id}`; list the keys to find its id", field="key_id"
                )
            if row["revoked_at"] is None:  # revoking twice keeps the first time
                row["revoked_at"] = self._clock()
                await ApiKeyRow.update({ApiKeyRow.revoked_at: row["revoked_at"]}).where(ApiKeyRow.key_id == key_id)
        return _to_key(row)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None; records when it was used (throttled)."""
        if not secret.startswith(SECRET_PREFIX):
            return None
        row = await ApiKeyRow.select().where(ApiKeyRow.secret_hash == hash_secret(secret)).first()
        if row is None or row["revoked_at"] is not None:
            return None
        now = self._clock()
        last = max(row["last_used_at"] or 0.0, self._last_written.get(row["key_id"], 0.0))
        if now - last >= LAST_USED_RESOLUTION_S:
            self._last_written[row["key_id"]] = now
            await ApiKeyRow.update({ApiKeyRow.last_used_at: now}).where(ApiKeyRow.key_id == row["key_id"])
            row["last_used_at"] = now
        return _to_key(row)
