"""stats-service: the generation log, aggregate figures, retention and export."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from contracts.messages.base import Record, Request
from contracts.messages.jobs import JobHeading, JobStatus, OutputFile


class GenerationRecord(JobHeading):
    """One generation as the stats service recorded it from the job's events (one row per job)."""

    instance: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    api_key_id: str | None = None
    client_name: str | None = None
    error: str | None = None  # why a job failed, or why it was cancelled
    accepted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_ms: float | None = None
    run_ms: float | None = None
    bytes_out: int = 0
    outputs: list[OutputFile] = []
    images_removed: bool = False  # the output files were deleted by retention; this metadata stays
    images_removed_at: float | None = None
    attempts: int = 0
    retry_reasons: list[str] = []
    enhancement_error: str | None = None  # the LLM rewrite failed and the prompt was used as written
    # Time the job spent loading models its instance did not hold; None: it loaded none (or did not complete).
    model_switch_ms: float | None = None
    logged_at: float = 0.0  # the job's first event (normally its acceptance): the time filters and retention use


class GetGeneration(Request):
    job_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class QueryLog(Request):
    """Filters of the generation log; the time range applies to `logged_at` (since <= t < until), epoch seconds."""

    since: float | None = None
    until: float | None = None
    status: JobStatus | None = None
    render_type: str | None = None
    instance: str | None = None  # part of the instance's name, any case
    api_key_id: str | None = None
    text: Annotated[str, msgspec.Meta(max_length=200)] | None = None  # case-insensitive, in the prompts
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    style: Annotated[str, msgspec.Meta(max_length=200)] | None = None  # jobs that used this style
    client_name: str | None = None


class LogPage(Record):
    items: list[GenerationRecord]  # newest first
    total: int
    limit: int
    offset: int


GroupBy = Literal["day", "hour", "render_type", "instance", "style", "api_key"]


class QueryFigures(Request):
    """Figures over the log rows whose `logged_at` falls in [since, until).

    Days and hours are calendar buckets shifted by `utc_offset_minutes` (e.g. 60 for CET), keyed
    "YYYY-MM-DD" and "YYYY-MM-DDTHH:00"; the empty ones of the range (since..until, or the first job to the
    last) are listed with zeros when the range spans at most 2000 buckets.
    """

    group_by: GroupBy
    since: float | None = None
    until: float | None = None
    render_type: str | None = None
    instance: str | None = None
    api_key_id: str | None = None
    utc_offset_minutes: Annotated[int, msgspec.Meta(ge=-14 * 60, le=14 * 60)] = 0


class FigureRow(Record):
    """Counts and durations of one group.

    failure_rate = failed / (completed + failed): jobs still in flight and cancelled jobs are not counted.
    Queue wait is taken over every job that started; run time over completed jobs only.
    Percentiles interpolate linearly between the closest ranks (the "inclusive" method of
    Python's statistics.quantiles, numpy's default): with values sorted x[0..n-1], the p-th
    percentile is at rank h = (n - 1) * p / 100, x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]);
    p50 is the usual median.
    """

    key: str  # the day, hour, render type, ...; "(none)" for jobs without one (e.g. never ran on an instance)
    count: int
    completed: int
    failed: int
    cancelled: int
    failure_rate: float
    images: int  # output files produced (images; videos for video render types)
    queue_wait_p50_ms: float | None = None
    queue_wait_p95_ms: float | None = None
    run_p50_ms: float | None = None
    run_p95_ms: float | None = None
    bytes_out: int = 0
    # Completed jobs that loaded models their instance did not hold, and the time those loads took together: what
    # model affinity is there to save.
    model_switches: int = 0
    model_switch_ms: float = 0.0


class Figures(Record):
    group_by: GroupBy
    rows: list[FigureRow]  # days and hours in time order; other groups by count, largest first
    total: FigureRow | None = None  # every row of the range together


class RetentionReport(Record):
    """What one retention run removed (or, with dry_run, would remove)."""

    images_removed: int  # output files deleted by the dispatcher
    bytes_freed: int
    log_rows_removed: int
    ran_at: float
    dry_run: bool = False
    jobs_cleared: int = 0  # log rows now marked images_removed
    images_missing: int = 0  # files the dispatcher no longer had (counted as removed)
    log_rows_waiting: int = 0  # rows past the log policy kept because their images could not be removed yet
    images_cutoff: float | None = None  # images of jobs logged before this instant are removed (None: kept forever)
    log_cutoff: float | None = None  # log rows before this instant are removed (None: kept forever)
    trigger: Literal["request", "schedule"] = "request"
    error: str | None = None  # set when the run could not finish (e.g. the dispatcher did not answer)
    duration_ms: float = 0.0


class RetentionPolicy(Record):
    keep_images_days: Annotated[int, msgspec.Meta(ge=0, description="0 keeps images forever")] = 30
    keep_log_days: Annotated[int, msgspec.Meta(ge=0, description="0 keeps log rows forever")] = 365
    run_every_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 7)] = 6.0
    # Filled by the service when read; ignored on save:
    updated_at: float | None = None
    last_run: RetentionReport | None = None
    next_run_at: float | None = None


class GetRetention(Request):
    pass


class SaveRetention(Request):
    policy: RetentionPolicy


class RunRetention(Request):
    dry_run: bool = False


class ExportLog(Request):
    """The log rows matching `query` (its limit is ignored), from `query.offset` on, as much as fits one reply.

    Ask again with `query.offset = next_offset` until `next_offset` is None; CSV parts after the first carry
    no header line, so the parts concatenate into one file. Rows are newest first: set `query.until` (e.g. to the
    time the export began) so jobs logged meanwhile do not shift the later parts.
    """

    format: Literal["csv", "jsonl"]
    query: QueryLog = msgspec.field(default_factory=QueryLog)


class LogExport(Record):
    format: Literal["csv", "jsonl"]
    filename: str
    content: str
    rows: int
    total: int = 0  # rows matching the filters
    next_offset: int | None = None  # None: this part ends the export
