"""NATS transport of the gateway: the API-key subjects (used by the admin UI), webhook deliveries asked by the UI,
and the generation events that feed the webhooks."""

from __future__ import annotations

from contracts import endpoints
from contracts.messages import keys
from contracts.runtime.service import ServiceRuntime
from gateway.store import ApiKeyStore
from gateway.webhooks import DELIVERIES, Webhooks, deliveries_of


class KeyHandlers:
    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def list(self, req: keys.ListApiKeys) -> keys.ApiKeyList:
        return await self._store.list(include_revoked=req.include_revoked)

    async def create(self, req: keys.CreateApiKey) -> keys.CreatedApiKey:
        return await self._store.create(req.name, req.scopes, req.limits)

    async def revoke(self, req: keys.RevokeApiKey) -> keys.ApiKey:
        return await self._store.revoke(req.key_id)

    async def set_limits(self, req: keys.SetApiKeyLimits) -> keys.ApiKey:
        return await self._store.set_limits(req.key_id, req.limits)

    async def defaults(self, _req: keys.GetKeyDefaults) -> keys.KeyDefaults:
        return await self._store.defaults()

    async def set_defaults(self, req: keys.SetKeyDefaults) -> keys.KeyDefaults:
        return await self._store.set_defaults(req.limits)


async def webhook_delivery(req: keys.GetWebhookDelivery) -> keys.WebhookDeliveryReply:
    """The job's webhook deliveries (for the admin UI's job page)."""
    return keys.WebhookDeliveryReply(deliveries=await deliveries_of(req.job_id))


def register(runtime: ServiceRuntime, key_store: ApiKeyStore, webhooks: Webhooks) -> None:
    handlers = KeyHandlers(key_store)
    runtime.endpoint(endpoints.Gateway.KEYS_LIST, handlers.list)
    runtime.endpoint(endpoints.Gateway.KEYS_CREATE, handlers.create)
    runtime.endpoint(endpoints.Gateway.KEYS_REVOKE, handlers.revoke)
    runtime.endpoint(endpoints.Gateway.KEYS_SET_LIMITS, handlers.set_limits)
    runtime.endpoint(endpoints.Gateway.KEYS_DEFAULTS_GET, handlers.defaults)
    runtime.endpoint(endpoints.Gateway.KEYS_DEFAULTS_SET, handlers.set_defaults)
    runtime.endpoint(endpoints.Gateway.KEYS_WEBHOOKS_SET, webhooks.set_key_webhooks)
    runtime.endpoint(endpoints.Gateway.WEBHOOK_GET, webhook_delivery)
    runtime.consume(DELIVERIES, webhooks.handle)
