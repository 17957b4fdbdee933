"""NATS transport of the gateway: the API-key subjects (used by the admin UI)."""

from __future__ import annotations

from contracts.messages.keys import ApiKey, ApiKeyList, CreateApiKey, CreatedApiKey, ListApiKeys, RevokeApiKey
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
