"""Answers to the generation log's queries: a page of it, one job, the figures (rows read through `store`)."""

from __future__ import annotations

from contracts.errors import ErrorCode, HubError
from contracts.messages.stats import Figures, GenerationRecord, GetGeneration, LogPage, QueryFigures, QueryLog
from stats_service import store
from stats_service.figures import compute_figures


async def query_log(query: QueryLog) -> LogPage:
    log_filter = store.LogFilter.of(query)
    total = await store.count(log_filter)
    items = await store.records(log_filter, limit=query.limit, offset=query.offset) if query.offset < total else []
    return LogPage(items=items, total=total, limit=query.limit, offset=query.offset)


async def get_generation(request: GetGeneration) -> GenerationRecord:
    found = await store.record(request.job_id)
    if found is None:
        raise HubError(
            ErrorCode.NOT_FOUND,
            f"no generation with job id {request.job_id!r} in the log (it may not be recorded yet, or was removed "
            "by the log retention policy)",
            field="job_id",
        )
    return found


async def query_figures(request: QueryFigures) -> Figures:
    """The figures of the log rows matching the request's filters (see figures.py for the definitions)."""
    rows = await store.figure_inputs(store.LogFilter.of(request))
    return compute_figures(
        rows, request.group_by, utc_offset_minutes=request.utc_offset_minutes, since=request.since, until=request.until
    )
