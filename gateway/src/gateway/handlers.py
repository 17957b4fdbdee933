"""NATS transport of the gateway: the API-key subjects (used by the admin UI), webhook deliveries asked by the UI,
and the generation events that feed the webhooks."""

from __future__ import annotations

from contracts import endpoints, topics
from contracts.messages import keys
from contracts.runtime.bus import publish
from contracts.runtime.service import ServiceRuntime
from gateway.store import ApiKeyStore
from gateway.webhooks import DELIVERIES, Webhooks, deliveries_of, remove_former_consumer


class KeyHandlers:
    def __init__(self, runtime: ServiceRuntime, store: ApiKeyStore, webhooks: Webhooks) -> None:
        self._runtime = runtime
        self._store = store
        self._webhooks = webhooks

    async def _changed(self, key: keys.ApiKey) -> None:
        """Every other replica forgets what it cached of the key (this one already has)."""
        await publish(self._runtime.nc, topics.Gateway.KEYS_CHANGED, key.key_id)

    async def forget(self, key_id: str) -> None:
        self._store.forget(key_id)

    async def list(self, req: keys.ListApiKeys) -> keys.ApiKeyList:
        return await self._store.list(include_revoked=req.include_revoked)

    async def create(self, req: keys.CreateApiKey) -> keys.CreatedApiKey:
        return await self._store.create(req.name, req.scopes, req.limits)

    async def revoke(self, req: keys.RevokeApiKey) -> keys.ApiKey:
        key = await self._store.revoke(req.key_id)
        await self._changed(key)
        return key

    async def set_limits(self, req: keys.SetApiKeyLimits) -> keys.ApiKey:
        key = await self._store.set_limits(req.key_id, req.limits)
        await self._changed(key)
        return key

    async def set_webhooks(self, req: keys.SetKeyWebhooks) -> keys.KeyWebhooks:
        changed = await self._webhooks.set_key_webhooks(req)
        await self._changed(changed.key)
        return changed

    async def defaults(self, _req: keys.GetKeyDefaults) -> keys.KeyDefaults:
        return await self._store.defaults()

    async def set_defaults(self, req: keys.SetKeyDefaults) -> keys.KeyDefaults:
        return await self._store.set_defaults(req.limits)


async def webhook_delivery(req: keys.GetWebhookDelivery) -> keys.WebhookDeliveryReply:
    """The job's webhook deliveries (for the admin UI's job page)."""
    return keys.WebhookDeliveryReply(deliveries=await deliveries_of(req.job_id))


def register(runtime: ServiceRuntime, key_store: ApiKeyStore, webhooks: Webhooks) -> None:
    handlers = KeyHandlers(runtime, key_store, webhooks)
    runtime.endpoint(endpoints.Gateway.KEYS_LIST, handlers.list)
    runtime.endpoint(endpoints.Gateway.KEYS_CREATE, handlers.create)
    runtime.endpoint(endpoints.Gateway.KEYS_REVOKE, handlers.revoke)
    runtime.endpoint(endpoints.Gateway.KEYS_SET_LIMITS, handlers.set_limits)
    runtime.endpoint(endpoints.Gateway.KEYS_DEFAULTS_GET, handlers.defaults)
    runtime.endpoint(endpoints.Gateway.KEYS_DEFAULTS_SET, handlers.set_defaults)
    runtime.endpoint(endpoints.Gateway.KEYS_WEBHOOKS_SET, handlers.set_webhooks)
    runtime.subscribe(topics.Gateway.KEYS_CHANGED, handlers.forget)
    runtime.endpoint(endpoints.Gateway.WEBHOOK_GET, webhook_delivery)
    runtime.consume(DELIVERIES, webhooks.handle)
    runtime.on_startup(remove_former_consumer)
