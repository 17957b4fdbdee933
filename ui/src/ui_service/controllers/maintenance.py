"""Maintenance: the retention policy, a clean-up run (or a dry run of one), and the generation log's export."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.messages.stats import (
    ExportLog,
    GetRetention,
    QueryLog,
    RunRetention,
    SaveRetention,
)
from ui_service.forms import form_of, retention_from_form
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, flash, page, require_admin


async def maintenance_page(
    request: Request,
    hub: HubClient,
    errors: dict | None = None,
    report: Any = None,
    form: dict[str, str] | None = None,
) -> Template:
    policy, error = await hub.try_ask(endpoints.Stats.RETENTION_GET, GetRetention())
    return page(
        "maintenance.html",
        request,
        policy=policy,
        load_error=error,
        errors=errors or {},
        report=report,
        form=form,
    )


class MaintenanceController(Controller):
    path = "/maintenance"
    guards = [require_admin]

    @get("/")
    async def maintenance(self, request: Request, hub: HubClient) -> Template:
        return await maintenance_page(request, hub)

    @post("/retention")
    async def save_retention(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection() as rejected:
            policy = retention_from_form(form)
            await hub.ask(endpoints.Stats.RETENTION_SAVE, SaveRetention(policy=policy))
        if rejected:
            return await maintenance_page(request, hub, rejected.errors, form=form)
        flash(request, "Saved the retention policy.")
        return Redirect("/maintenance")

    @post("/clean")
    async def clean_now(self, request: Request, hub: HubClient) -> Template:
        dry_run = (await form_of(request)).get("dry_run") == "on"
        report, error = await hub.try_ask(endpoints.Stats.RETENTION_RUN, RunRetention(dry_run=dry_run))
        return await maintenance_page(request, hub, {"form": error} if error else None, report=report)

    @get("/export")
    async def export_log(self, request: Request, hub: HubClient) -> Response[str]:
        export_format: Literal["csv", "jsonl"] = "jsonl" if request.query_params.get("format") == "jsonl" else "csv"
        query = QueryLog(until=time.time())
        parts: list[str] = []
        filename = f"generations.{export_format}"
        while True:
            part = await hub.ask(endpoints.Stats.EXPORT, ExportLog(format=export_format, query=query), timeout=30)
            parts.append(part.content)
            filename = part.filename
            if part.next_offset is None:
                break
            query = msgspec.structs.replace(query, offset=part.next_offset)
        return Response(
            "".join(parts),
            media_type="text/csv" if export_format == "csv" else "application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
