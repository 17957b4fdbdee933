"""Assembles the gateway: its database (API keys), its NATS handlers and its HTTP server (MCP, images)."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.http import serve_http
from contracts.runtime.outbound_url import UrlAllowlist
from contracts.runtime.service import ServiceRuntime
from gateway import __version__, handlers, piccolo_conf
from gateway.http_app import create_http_app
from gateway.hub_client import HubClient
from gateway.mcp_server import HubMcp, McpSettings
from gateway.store import ApiKeyStore
from gateway.webhooks import Webhooks


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="MCP server, REST API and image delivery")
    attach(runtime, piccolo_conf.DB, "gateway")
    tuning = McpSettings(
        tool_budget_s=settings.gateway_tool_budget_s, thumbnail_max_bytes=settings.gateway_thumbnail_max_bytes
    )
    keys = ApiKeyStore()
    webhooks = Webhooks(runtime, keys, UrlAllowlist.parse(settings.input_url_allow))
    handlers.register(runtime, keys, webhooks)

    def make_mcp(hub: HubClient) -> HubMcp:
        return HubMcp(hub, tuning, runtime.log)

    app = create_http_app(runtime, keys, make_mcp, webhooks)
    serve_http(runtime, app, host=settings.gateway_host, port=settings.gateway_port)
    return runtime
