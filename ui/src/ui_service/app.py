"""Assembles the admin UI: its database (the admin account) and its HTTP server."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.host_guard import HostGuard, policy_of, text_refusal
from contracts.runtime.http import serve_http
from contracts.runtime.service import ServiceRuntime
from ui_service import __version__, accounts, piccolo_conf
from ui_service.http_app import create_http_app


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Admin web interface")

    async def create_admin() -> None:
        outcome = await accounts.ensure_admin(settings.admin_password)
        if outcome == "missing":
            runtime.log.warning("no admin account: set HUB_ADMIN_PASSWORD and restart the ui")
        else:
            runtime.log.info("admin account", outcome=outcome)

    attach(runtime, piccolo_conf.DB, "ui", seed=create_admin)
    # Host and Origin allowlists (DNS-rebinding defence, HUB_UI_ALLOWED_HOSTS / _ORIGINS) before any page.
    app = HostGuard(create_http_app(runtime), policy_of(settings, "ui"), refusal=text_refusal, log=runtime.log)
    serve_http(runtime, app, host=settings.ui_host, port=settings.ui_port)
    return runtime
