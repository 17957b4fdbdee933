"""The services' health: the admin's status page, and the UI's own /healthz for probes."""

from __future__ import annotations

from litestar import Controller, Request, get
from litestar.response import Template

from ui_service.hub_client import HubClient
from ui_service.pages import page, require_admin


class ServicesController(Controller):
    path = "/"

    @get("/status", guards=[require_admin])
    async def status_page(self, request: Request, hub: HubClient) -> Template:
        return page("status.html", request, rows=await hub.service_health())

    @get("/healthz", sync_to_thread=False)
    def healthz(self, hub: HubClient) -> dict[str, object]:
        runtime = hub.runtime
        return {"service": runtime.name, "version": runtime.version, "instance_id": runtime.instance_id}
