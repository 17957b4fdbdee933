"""Assembles the admin UI: its database (sessions, issue 6) and its HTTP server."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.http import serve_http
from contracts.runtime.service import ServiceRuntime
from ui_service import __version__, piccolo_conf
from ui_service.http_app import create_http_app


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Admin web interface")
    attach(runtime, piccolo_conf.DB, "ui")
    serve_http(runtime, create_http_app(runtime), host=settings.ui_host, port=settings.ui_port)
    return runtime
