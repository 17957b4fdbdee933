"""Assembles the gateway: its database (API keys, issue 9), its NATS handlers and its HTTP server."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.http import serve_http
from contracts.runtime.service import ServiceRuntime
from gateway import __version__, piccolo_conf
from gateway.http_app import create_http_app


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="MCP server, REST API and image delivery")
    attach(runtime, piccolo_conf.DB, "gateway")
    serve_http(runtime, create_http_app(runtime), host=settings.gateway_host, port=settings.gateway_port)
    return runtime
