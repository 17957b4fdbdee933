"""Aggregate figures over rows of the generation log: counts, failure rate, median and p95 durations, images.

Pure functions; store.py loads the rows.

Percentiles interpolate linearly between the closest ranks (Hyndman & Fan type 7: numpy's default, Excel's
PERCENTILE.INC, `statistics.quantiles(method="inclusive")`). With the n values sorted as x[0..n-1], the p-th
percentile sits at rank h = (n - 1) * p / 100 and is x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]).
So p50 is the usual median (the mean of the two middle values when n is even), and one value is its own p95.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from contracts.messages.stats import FigureRow, Figures, GroupBy

NO_VALUE = "(none)"  # the key of jobs without a render type, instance, style or key
MAX_FILLED_BUCKETS = 2000  # empty days/hours are listed with zeros up to this many buckets
BUCKET_SECONDS = {"day": 86400, "hour": 3600}


class FigureInput(msgspec.Struct, kw_only=True):
    """The columns of one log row that the figures need."""

    logged_at: float
    status: str
    render_type: str = ""
    instance: str | None = None
    styles: list[str] = []
    api_key_id: str | None = None
    queue_wait_ms: float | None = None
    run_ms: float | None = None
    output_count: int = 0
    bytes_out: int = 0
    model_switch_ms: float | None = None


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100) of already sorted values, by linear interpolation (see the module doc)."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (rank - low) * (sorted_values[high] - sorted_values[low])


def figure_row(key: str, rows: Sequence[FigureInput]) -> FigureRow:
    completed = sum(1 for r in rows if r.status == "completed")
    failed = sum(1 for r in rows if r.status == "failed")
    cancelled = sum(1 for r in rows if r.status == "cancelled")
    waits = sorted(r.queue_wait_ms for r in rows if r.queue_wait_ms is not None)
    runs = sorted(r.run_ms for r in rows if r.run_ms is not None and r.status == "completed")
    switches = [r.model_switch_ms for r in rows if r.model_switch_ms is not None]
    return FigureRow(
        key=key,
        count=len(rows),
        completed=completed,
        failed=failed,
        cancelled=cancelled,
        failure_rate=failed / (completed + failed) if completed + failed else 0.0,
        images=sum(r.output_count for r in rows),
        queue_wait_p50_ms=percentile(waits, 50),
        queue_wait_p95_ms=percentile(waits, 95),
        run_p50_ms=percentile(runs, 50),
        run_p95_ms=percentile(runs, 95),
        bytes_out=sum(r.bytes_out for r in rows),
        model_switches=len(switches),
        model_switch_ms=round(sum(switches), 1),
    )


def _bucket_start(at: float, size: int, offset_s: int) -> int:
    return math.floor((at + offset_s) / size) * size


def _bucket_key(start: int, group_by: str) -> str:
    moment = datetime.fromtimestamp(start, UTC)
    return moment.strftime("%Y-%m-%d") if group_by == "day" else moment.strftime("%Y-%m-%dT%H:00")


def _keys(row: FigureInput, group_by: GroupBy, offset_s: int) -> Iterable[str]:
    if group_by in BUCKET_SECONDS:
        return (_bucket_key(_bucket_start(row.logged_at, BUCKET_SECONDS[group_by], offset_s), group_by),)
    if group_by == "style":
        return tuple(dict.fromkeys(row.styles)) or (NO_VALUE,)
    value = {"render_type": row.render_type, "instance": row.instance, "api_key": row.api_key_id}[group_by]
    return (value or NO_VALUE,)


def compute_figures(
    rows: Sequence[FigureInput],
    group_by: GroupBy,
    *,
    utc_offset_minutes: int = 0,
    since: float | None = None,
    until: float | None = None,
) -> Figures:
    offset_s = utc_offset_minutes * 60
    groups: dict[str, list[FigureInput]] = {}
    for row in rows:
        for key in _keys(row, group_by, offset_s):
            groups.setdefault(key, []).append(row)
    if group_by in BUCKET_SECONDS:
        keys = _time_buckets(rows, group_by, offset_s, since, until) or sorted(groups)
        result = [figure_row(key, groups.get(key, [])) for key in keys]
    else:
        result = sorted((figure_row(key, members) for key, members in groups.items()), key=lambda r: (-r.count, r.key))
    return Figures(group_by=group_by, rows=result, total=figure_row("total", rows))


def _time_buckets(
    rows: Sequence[FigureInput], group_by: str, offset_s: int, since: float | None, until: float | None
) -> list[str]:
    """Every day/hour from the start of the range to its end, empty ones included (none if too many)."""
    size = BUCKET_SECONDS[group_by]
    first = since if since is not None else min((r.logged_at for r in rows), default=None)
    last = until - 1e-6 if until is not None else max((r.logged_at for r in rows), default=None)
    if first is None or last is None or last < first:
        return []
    start, end = _bucket_start(first, size, offset_s), _bucket_start(last, size, offset_s)
    if (end - start) // size + 1 > MAX_FILLED_BUCKETS:
        return []
    return [_bucket_key(bucket, group_by) for bucket in range(start, end + size, size)]
