"""Statistics: figures per day, render type and instance, and the generation log with filters and pages."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode

from litestar import Controller, Request, get
from litestar.response import Template

from contracts import endpoints
from contracts.messages.stats import QueryFigures, QueryLog
from ui_service.hub_client import HubClient
from ui_service.pages import page, require_admin

PER_PAGE = 25
FILTERS = ("status", "render_type", "instance", "text")


def log_query_of(filters: dict[str, str], page_number: int, since: float) -> QueryLog:
    """The log of the period the header names (the figures' period), filtered, one page of it."""
    return QueryLog(
        since=since,
        # A filter value from the page's own select; the stats service validates it when it decodes the query.
        status=filters["status"] or None,  # type: ignore[arg-type]
        render_type=filters["render_type"] or None,
        instance=filters["instance"] or None,
        text=filters["text"] or None,
        limit=PER_PAGE,
        offset=(page_number - 1) * PER_PAGE,
    )


class StatisticsController(Controller):
    path = "/stats"
    guards = [require_admin]

    @get("/")
    async def stats(self, request: Request, hub: HubClient) -> Template:
        params = request.query_params
        filters = {key: params.get(key, "").strip() for key in FILTERS}
        page_number = max(1, int(params.get("page", "1")) if params.get("page", "1").isdigit() else 1)
        days = int(params.get("days", "14")) if params.get("days", "14").isdigit() else 14
        since = time.time() - days * 86400
        (per_day, _), (per_render_type, _), (per_instance, _), (log, log_error) = await asyncio.gather(
            hub.try_ask(endpoints.Stats.FIGURES, QueryFigures(group_by="day", since=since)),
            hub.try_ask(endpoints.Stats.FIGURES, QueryFigures(group_by="render_type", since=since)),
            hub.try_ask(endpoints.Stats.FIGURES, QueryFigures(group_by="instance", since=since)),
            hub.try_ask(endpoints.Stats.LOG_QUERY, log_query_of(filters, page_number, since)),
        )
        kept = {k: v for k, v in filters.items() if v}
        return page(
            "stats.html",
            request,
            per_day=per_day,
            per_render_type=per_render_type,
            per_instance=per_instance,
            # A job cancelled before it ran has no run time: it has no place among the medians.
            ran_per_instance=[r for r in per_instance.rows if r.run_p50_ms is not None] if per_instance else [],
            log=log,
            log_error=log_error,
            filters=filters,
            days=days,
            page_number=page_number,
            page_query=lambda number: urlencode({**kept, "days": days, "page": number}),
            pages=max(1, -(-log.total // PER_PAGE)) if log else 1,
        )
