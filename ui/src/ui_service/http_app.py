"""The admin UI's HTTP application (litestar + Jinja2). It talks to the other services over NATS only.

This first page shows the health of every service; the admin pages (login, instances, render types,
styles, statistics, test generation) arrive with issue 6.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from litestar import Litestar, get
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from contracts import subjects
from contracts.errors import HubError
from contracts.messages.health import HealthReply, HealthRequest
from contracts.runtime.bus import request
from contracts.runtime.service import ServiceRuntime

TEMPLATES = Path(__file__).parent / "templates"


async def service_health(runtime: ServiceRuntime) -> list[tuple[str, HealthReply | None, str]]:
    async def one(service: str) -> tuple[str, HealthReply | None, str]:
        try:
            return (
                service,
                await request(runtime.nc, subjects.health(service), HealthRequest(), HealthReply, timeout=2),
                "",
            )
        except HubError as exc:
            return service, None, exc.info.message

    return list(await asyncio.gather(*(one(service) for service in subjects.SERVICES)))


def create_http_app(runtime: ServiceRuntime) -> Litestar:
    @get("/")
    async def status_page() -> Template:
        return Template(template_name="status.html", context={"rows": await service_health(runtime)})

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, object]:
        return {"service": runtime.name, "version": runtime.version, "instance_id": runtime.instance_id}

    return Litestar(
        route_handlers=[status_page, healthz],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        openapi_config=None,
        logging_config=None,  # the service runtime owns logging
    )
