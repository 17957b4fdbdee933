"""Assembles the gateway: its database (API keys), its NATS handlers and its HTTP server (MCP, images)."""

from contracts import endpoints
from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.http import serve_http
from contracts.runtime.outbound_url import UrlAllowlist
from contracts.runtime.service import ServiceRuntime
from gateway import __version__, piccolo_conf
from gateway.handlers import KeyHandlers
from gateway.http_app import create_http_app
from gateway.hub_client import HubClient
from gateway.mcp_server import HubMcp, McpSettings
from gateway.store import ApiKeyStore
from gateway.webhooks import Webhooks, delivery_reply


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="MCP server, REST API and image delivery")
    attach(runtime, piccolo_conf.DB, "gateway")
    tuning = McpSettings(
        tool_budget_s=settings.gateway_tool_budget_s, thumbnail_max_bytes=settings.gateway_thumbnail_max_bytes
    )
    keys = ApiKeyStore()
    handlers = KeyHandlers(keys)
    runtime.endpoint(endpoints.Gateway.KEYS_LIST, handlers.list)
    runtime.endpoint(endpoints.Gateway.KEYS_CREATE, handlers.create)
    runtime.endpoint(endpoints.Gateway.KEYS_REVOKE, handlers.revoke)
    runtime.endpoint(endpoints.Gateway.KEYS_SET_LIMITS, handlers.set_limits)
    runtime.endpoint(endpoints.Gateway.KEYS_DEFAULTS_GET, handlers.defaults)
    runtime.endpoint(endpoints.Gateway.KEYS_DEFAULTS_SET, handlers.set_defaults)
    runtime.endpoint(endpoints.Gateway.WEBHOOK_GET, delivery_reply)

    def make_mcp(hub: HubClient) -> HubMcp:
        return HubMcp(hub, tuning, runtime.log)

    webhooks = Webhooks(runtime, keys, UrlAllowlist.parse(settings.input_url_allow))

    async def start_webhooks(_runtime: ServiceRuntime) -> None:
        await webhooks.setup()
        runtime.spawn(webhooks.run(), name="webhooks")

    runtime.on_startup(start_webhooks)
    app = create_http_app(runtime, keys, make_mcp, webhooks)
    serve_http(runtime, app, host=settings.gateway_host, port=settings.gateway_port)
    return runtime
