"""Reading the generation log: filters, pages, one job, and the rows behind the figures."""

from __future__ import annotations

from typing import Any

import msgspec
from piccolo.columns.combination import WhereRaw

from contracts.errors import ErrorCode, HubError
from contracts.messages.stats import Figures, GenerationRecord, GetGeneration, LogPage, QueryFigures, QueryLog
from stats_service.db import as_text, escape_like, like_operator
from stats_service.figures import FigureInput, compute_figures
from stats_service.ingest import state_from_row
from stats_service.tables import GenerationRow

# The columns a GenerationRecord is made of (the merge bookkeeping stays inside the service).
RECORD_COLUMNS = tuple(getattr(GenerationRow, f.name) for f in msgspec.structs.fields(GenerationRecord))


class LogFilter(msgspec.Struct, kw_only=True, frozen=True):
    """The filters shared by the log, its export and the figures (None: no filter)."""

    since: float | None = None
    until: float | None = None
    status: str | None = None
    render_type: str | None = None
    instance: str | None = None
    api_key_id: str | None = None
    client_name: str | None = None
    style: str | None = None
    text: str | None = None

    @classmethod
    def of(cls, query: msgspec.Struct) -> LogFilter:
        """The filter fields of a request (QueryLog, QueryFigures, ...), checked."""
        names = {f.name for f in msgspec.structs.fields(cls)}
        values = {name: getattr(query, name) for name in names if hasattr(query, name)}
        result = cls(**values)
        if result.since is not None and result.until is not None and result.until <= result.since:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"`until` ({result.until}) must be later than `since` ({result.since}); both are epoch seconds",
                field="until",
            )
        return result

    def where(self) -> list[Any]:
        """piccolo conditions, to be ANDed."""
        conditions: list[Any] = []
        if self.since is not None:
            conditions.append(GenerationRow.logged_at >= self.since)
        if self.until is not None:
            conditions.append(GenerationRow.logged_at < self.until)
        for name in ("status", "render_type", "instance", "api_key_id", "client_name"):
            value = getattr(self, name)
            if value is not None:
                conditions.append(getattr(GenerationRow, name) == value)
        if self.style:
            pattern = "%" + escape_like(msgspec.json.encode(self.style).decode()) + "%"
            conditions.append(WhereRaw(f"{as_text('styles')} LIKE {{}} ESCAPE '!'", pattern))
        if self.text and self.text.strip():
            pattern = "%" + escape_like(self.text.strip()) + "%"
            like = like_operator()
            conditions.append(
                WhereRaw(
                    f"(prompt {like} {{}} ESCAPE '!' OR positive_prompt {like} {{}} ESCAPE '!' "
                    f"OR negative_prompt {like} {{}} ESCAPE '!')",
                    pattern,
                    pattern,
                    pattern,
                )
            )
        return conditions


def record_from_row(row: dict[str, Any]) -> GenerationRecord:
    state = state_from_row(row)
    values = {f.name: getattr(state, f.name) for f in msgspec.structs.fields(GenerationRecord)}
    return GenerationRecord(**values)


def _select(log_filter: LogFilter) -> Any:
    query = GenerationRow.select(*RECORD_COLUMNS)
    conditions = log_filter.where()
    if conditions:
        query = query.where(*conditions)
    return query.order_by(GenerationRow.logged_at, GenerationRow.id, ascending=False)


async def count(log_filter: LogFilter) -> int:
    query = GenerationRow.count()
    conditions = log_filter.where()
    if conditions:
        query = query.where(*conditions)
    return int(await query)


async def records(log_filter: LogFilter, *, limit: int, offset: int) -> list[GenerationRecord]:
    """Newest first (by logged_at, then by insertion), so pages are stable while the log grows at the top."""
    rows = await _select(log_filter).limit(limit).offset(offset)
    return [record_from_row(row) for row in rows]


async def query_log(query: QueryLog) -> LogPage:
    log_filter = LogFilter.of(query)
    total = await count(log_filter)
    items = await records(log_filter, limit=query.limit, offset=query.offset) if query.offset < total else []
    return LogPage(items=items, total=total, limit=query.limit, offset=query.offset)


async def get_generation(request: GetGeneration) -> GenerationRecord:
    row = await GenerationRow.select(*RECORD_COLUMNS).where(GenerationRow.job_id == request.job_id).first()
    if row is None:
        raise HubError(
            ErrorCode.NOT_FOUND,
            f"no generation with job id {request.job_id!r} in the log (it may not be recorded yet, or was removed "
            "by the log retention policy)",
            field="job_id",
        )
    return record_from_row(row)


FIGURE_COLUMNS = tuple(getattr(GenerationRow, f.name) for f in msgspec.structs.fields(FigureInput))


async def figure_inputs(log_filter: LogFilter) -> list[FigureInput]:
    query = GenerationRow.select(*FIGURE_COLUMNS)
    conditions = log_filter.where()
    if conditions:
        query = query.where(*conditions)
    rows: list[dict[str, Any]] = await query
    for row in rows:
        if isinstance(row["styles"], (str, bytes)):
            row["styles"] = msgspec.json.decode(row["styles"])
    return msgspec.convert(rows, list[FigureInput], strict=False)


async def query_figures(request: QueryFigures) -> Figures:
    """The figures of the log rows matching the request's filters (see figures.py for the definitions)."""
    rows = await figure_inputs(LogFilter.of(request))
    return compute_figures(
        rows, request.group_by, utc_offset_minutes=request.utc_offset_minutes, since=request.since, until=request.until
    )
