"""NATS transport of the gateway: the API-key subjects (used by the admin UI)."""

from __future__ import annotations

from contracts.messages.keys import (
    ApiKey,
    ApiKeyList,
    CreateApiKey,
    CreatedApiKey,
    GetKeyDefaults,
    KeyDefaults,
    ListApiKeys,
    RevokeApiKey,
    SetApiKeyLimits,
    SetKeyDefaults,
)
from gateway.store import ApiKeyStore


class KeyHandlers:
    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def list(self, req: ListApiKeys) -> ApiKeyList:
        return await self._store.list(include_revoked=req.include_revoked)

    async def create(self, req: CreateApiKey) -> CreatedApiKey:
        return await self._store.create(req.name, req.scopes, req.limits)

    async def revoke(self, req: RevokeApiKey) -> ApiKey:
        return await self._store.revoke(req.key_id)

    async def set_limits(self, req: SetApiKeyLimits) -> ApiKey:
        return await self._store.set_limits(req.key_id, req.limits)

    async def defaults(self, _req: GetKeyDefaults) -> KeyDefaults:
        return await self._store.defaults()

    async def set_defaults(self, req: SetKeyDefaults) -> KeyDefaults:
        return await self._store.set_defaults(req.limits)
