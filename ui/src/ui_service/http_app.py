"""The admin UI's HTTP application (litestar + Jinja2). It talks to the other services over NATS only.

Every page but /login and /healthz needs the admin session; every form carries a CSRF token; templates
autoescape; any error renders a friendly page (never a stack trace). The pages live in `controllers/`, one
Controller per area; they get the HubClient by dependency injection.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from litestar import Litestar, get
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from contracts.runtime.bus import open_bucket
from contracts.runtime.service import ServiceRuntime
from contracts.streams import UI_SECRETS, UI_SESSIONS
from ui_service.controllers import CONTROLLERS
from ui_service.hub_client import HubClient, provide_hub
from ui_service.pages import EXCEPTION_HANDLERS, add_template_filters
from ui_service.sessions import SESSION_COOKIE, KvSessionStore, SessionConfig, shared_secret

HERE = Path(__file__).parent


def shared_state_opener(
    runtime: ServiceRuntime, session_store: KvSessionStore, csrf_config: CSRFConfig
) -> Callable[[ServiceRuntime], Awaitable[None]]:
    """At start: the sessions bucket and the CSRF key every replica shares (until then nothing is served)."""

    async def open_shared_state(_runtime: ServiceRuntime) -> None:
        js = runtime.nc.jetstream()
        replicas = runtime.settings.jetstream_replicas
        session_store.open(await open_bucket(js, UI_SESSIONS, replicas), runtime.nc)
        csrf_config.secret = await shared_secret(await open_bucket(js, UI_SECRETS, replicas), "csrf")

    return open_shared_state


@get("/favicon.ico", include_in_schema=False)
async def favicon() -> Redirect:
    """Browsers and tools that ask for /favicon.ico get the page icon (before: a 404 in the log for every page)."""
    return Redirect("/static/favicon.svg", status_code=301)


def create_http_app(runtime: ServiceRuntime) -> Litestar:
    session_store = KvSessionStore()
    # The real key comes from the shared secrets bucket at start; this random one is replaced before serving.
    csrf_config = CSRFConfig(
        secret=secrets.token_hex(32),
        cookie_httponly=True,
        cookie_samesite="lax",
        exclude=["/healthz", "/static"],
    )
    runtime.on_startup(shared_state_opener(runtime, session_store, csrf_config))
    return Litestar(
        route_handlers=[
            *CONTROLLERS,
            favicon,
            create_static_files_router(path="/static", directories=[HERE / "static"]),
        ],
        dependencies={"hub": Provide(provide_hub, sync_to_thread=False)},
        state=State({"hub": HubClient(runtime)}),
        template_config=TemplateConfig(
            directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=add_template_filters
        ),
        middleware=[
            SessionConfig(
                key=SESSION_COOKIE, httponly=True, samesite="lax", max_age=int(UI_SESSIONS.ttl_s), store="sessions"
            ).middleware
        ],
        stores={"sessions": session_store},
        csrf_config=csrf_config,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=32 * 1024 * 1024,  # an image or workflow upload beyond it gets a clear 413 page
        openapi_config=None,
        logging_config=None,  # the service runtime owns logging
        debug=False,
    )
