"""gateway: API keys. Only a hash of the secret is stored; the secret is shown once, at creation."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.messages.base import Record, Request


class ApiKey(Record):
    key_id: str
    name: str
    prefix: str  # the first characters of the secret, so an admin can tell keys apart
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


class ApiKeyList(Record):
    keys: list[ApiKey]


class ListApiKeys(Request):
    include_revoked: bool = False


class CreateApiKey(Request):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]


class CreatedApiKey(Record):
    key: ApiKey
    secret: str  # shown once


class RevokeApiKey(Request):
    key_id: str
