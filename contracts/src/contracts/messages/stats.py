"""stats-service: the generation log, aggregate figures, retention and export."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from contracts.messages.base import Record, Request
from contracts.messages.jobs import JobStatus, OutputFile


class GenerationRecord(Record):
    job_id: str
    status: JobStatus
    render_type: str
    prompt: str
    positive_prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    instance: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    api_key_id: str | None = None
    client_name: str | None = None
    error: str | None = None
    accepted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_ms: float | None = None
    run_ms: float | None = None
    bytes_out: int = 0
    outputs: list[OutputFile] = []
    images_removed: bool = False


class QueryLog(Request):
    since: float | None = None
    until: float | None = None
    status: JobStatus | None = None
    render_type: str | None = None
    instance: str | None = None
    api_key_id: str | None = None
    text: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class LogPage(Record):
    items: list[GenerationRecord]
    total: int
    limit: int
    offset: int


GroupBy = Literal["day", "hour", "render_type", "instance", "style", "api_key"]


class QueryFigures(Request):
    group_by: GroupBy
    since: float | None = None
    until: float | None = None


class FigureRow(Record):
    key: str
    count: int
    completed: int
    failed: int
    cancelled: int
    failure_rate: float
    images: int
    queue_wait_p50_ms: float | None = None
    queue_wait_p95_ms: float | None = None
    run_p50_ms: float | None = None
    run_p95_ms: float | None = None


class Figures(Record):
    group_by: GroupBy
    rows: list[FigureRow]


class RetentionPolicy(Record):
    keep_images_days: Annotated[int, msgspec.Meta(ge=0, description="0 keeps images forever")] = 30
    keep_log_days: Annotated[int, msgspec.Meta(ge=0, description="0 keeps log rows forever")] = 365
    run_every_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 7)] = 6.0


class GetRetention(Request):
    pass


class SaveRetention(Request):
    policy: RetentionPolicy


class RunRetention(Request):
    dry_run: bool = False


class RetentionReport(Record):
    images_removed: int
    bytes_freed: int
    log_rows_removed: int
    ran_at: float
    dry_run: bool = False


class ExportLog(Request):
    format: Literal["csv", "jsonl"]
    query: QueryLog = msgspec.field(default_factory=QueryLog)


class LogExport(Record):
    format: Literal["csv", "jsonl"]
    filename: str
    content: str
    rows: int
