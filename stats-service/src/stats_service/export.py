"""Export of the generation log as CSV or JSON lines, in parts that each fit one NATS reply."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from contracts.messages.stats import ExportLog, GenerationRecord, LogExport
from stats_service.store import LogFilter, count, records

PAGE_ROWS = 200  # rows read from the database at a time

CSV_COLUMNS: tuple[tuple[str, Callable[[GenerationRecord], object]], ...] = (
    ("job_id", lambda r: r.job_id),
    ("logged_at", lambda r: _iso(r.logged_at)),
    ("status", lambda r: r.status),
    ("render_type", lambda r: r.render_type),
    ("prompt", lambda r: r.prompt),
    ("positive_prompt", lambda r: r.positive_prompt),
    ("negative_prompt", lambda r: r.negative_prompt),
    ("styles", lambda r: ";".join(r.styles)),
    ("instance", lambda r: r.instance),
    ("seed", lambda r: r.seed),
    ("width", lambda r: r.width),
    ("height", lambda r: r.height),
    ("api_key_id", lambda r: r.api_key_id),
    ("client_name", lambda r: r.client_name),
    ("error", lambda r: r.error),
    ("attempts", lambda r: r.attempts),
    ("accepted_at", lambda r: _iso(r.accepted_at)),
    ("started_at", lambda r: _iso(r.started_at)),
    ("finished_at", lambda r: _iso(r.finished_at)),
    ("queue_wait_ms", lambda r: _number(r.queue_wait_ms)),
    ("run_ms", lambda r: _number(r.run_ms)),
    ("images", lambda r: len(r.outputs)),
    ("bytes_out", lambda r: r.bytes_out),
    ("output_ids", lambda r: " ".join(o.output_id for o in r.outputs)),
    ("images_removed", lambda r: "true" if r.images_removed else "false"),
)
# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection): such text
# cells get a leading apostrophe, which spreadsheets show as plain text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _iso(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}".rstrip("0").rstrip(".")


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(items: list[GenerationRecord], *, header: bool) -> list[str]:
    """One CSV line (RFC 4180, CRLF) per record, the header line first when asked."""
    lines: list[str] = []
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def take(row: list[object]) -> None:
        writer.writerow(row)
        lines.append(buffer.getvalue())
        buffer.seek(0)
        buffer.truncate()

    if header:
        take([name for name, _ in CSV_COLUMNS])
    for record in items:
        take([_cell(read(record)) for _, read in CSV_COLUMNS])
    return lines


def jsonl_lines(items: list[GenerationRecord]) -> list[str]:
    return [msgspec.json.encode(record).decode() + "\n" for record in items]


async def export_log(request: ExportLog, *, max_bytes: int) -> LogExport:
    """The rows from `request.query.offset` on, as many as fit in `max_bytes` once JSON-encoded in the reply."""
    log_filter = LogFilter.of(request.query)
    total = await count(log_filter)
    start = request.query.offset
    parts: list[str] = []
    used = 0
    rows = 0
    position = start
    header_pending = request.format == "csv" and start == 0
    full = False
    while position < total and not full:
        page = await records(log_filter, limit=PAGE_ROWS, offset=position)
        if not page:
            break
        for record in page:
            lines = csv_lines([record], header=header_pending) if request.format == "csv" else jsonl_lines([record])
            size = sum(len(msgspec.json.encode(line)) - 2 for line in lines)  # as escaped inside the reply
            if rows and used + size > max_bytes:
                full = True
                break
            parts.extend(lines)
            used += size
            rows += 1
            position += 1
            header_pending = False
    if header_pending:  # no rows at all: a CSV file with its header only
        parts.extend(csv_lines([], header=True))
    day = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return LogExport(
        format=request.format,
        filename=f"generations-{day}.{request.format}",
        content="".join(parts),
        rows=rows,
        total=total,
        next_offset=position if position < total else None,
    )
