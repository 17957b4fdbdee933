"""The stats service's storage: the only module that reads or writes its tables.

Everything it returns is a msgspec Struct (`JobState`, `GenerationRecord`, `FigureInput`, `ImageRow`,
`PolicyRecord`); the domain modules (ingest, queries, export, retention) never see a row dict. The helpers at the
top keep the SQL the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from piccolo.columns.combination import WhereRaw
from piccolo.engine.sqlite import SQLiteEngine

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import OutputFile
from contracts.messages.stats import GenerationRecord, RetentionPolicy, RetentionReport
from contracts.runtime import database
from stats_service.figures import FigureInput
from stats_service.merge import JobState
from stats_service.tables import GenerationRow, RetentionRow

JSON_COLUMNS = ("styles", "retry_reasons", "final_timings", "outputs")
INSERT_CHUNK = 200  # rows per INSERT statement, well below SQLite's limit of bound parameters
# The columns a GenerationRecord / a FigureInput is made of (the merge bookkeeping stays inside the service).
RECORD_COLUMNS = tuple(getattr(GenerationRow, f.name) for f in msgspec.structs.fields(GenerationRecord))
FIGURE_COLUMNS = tuple(getattr(GenerationRow, f.name) for f in msgspec.structs.fields(FigureInput))


# -- the engine -------------------------------------------------------------------------------------------


def engine() -> Any:
    return GenerationRow._meta.db


def is_sqlite() -> bool:
    return isinstance(engine(), SQLiteEngine)


def write_transaction() -> Any:
    """A transaction for read-modify-write on this service's database (PostgreSQL: rows read FOR UPDATE)."""
    return database.write_transaction(engine())


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern whose escape character is `!`."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def like_operator() -> str:
    """Case-insensitive LIKE: SQLite's LIKE already ignores ASCII case; PostgreSQL needs ILIKE."""
    return "LIKE" if is_sqlite() else "ILIKE"


def as_text(column: str) -> str:
    """A JSON column compared as text (PostgreSQL stores it as json, SQLite as text)."""
    return column if is_sqlite() else f"{column}::text"


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns decoded (SQLite returns them as text), ready for msgspec.convert."""
    values = {k: v for k, v in row.items() if k != "id"}
    for name in JSON_COLUMNS:
        if isinstance(values.get(name), (str, bytes)):
            values[name] = msgspec.json.decode(values[name])
    return values


# -- the generation log: filters and reads ---------------------------------------------------------------


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
        for name in ("status", "render_type", "api_key_id", "client_name"):
            value = getattr(self, name)
            if value is not None:
                conditions.append(getattr(GenerationRow, name) == value)
        if self.instance and self.instance.strip():  # part of the name, any case: "gpu" finds gpu-1 and gpu-2
            pattern = "%" + escape_like(self.instance.strip()) + "%"
            conditions.append(WhereRaw(f"instance {like_operator()} {{}} ESCAPE '!'", pattern))
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


def _filtered(query: Any, log_filter: LogFilter) -> Any:
    conditions = log_filter.where()
    return query.where(*conditions) if conditions else query


def _record(row: dict[str, Any]) -> GenerationRecord:
    return msgspec.convert(_decoded(row), GenerationRecord, strict=False)


async def count(log_filter: LogFilter) -> int:
    return int(await _filtered(GenerationRow.count(), log_filter))


async def records(log_filter: LogFilter, *, limit: int, offset: int) -> list[GenerationRecord]:
    """Newest first (by logged_at, then by insertion), so pages are stable while the log grows at the top."""
    query = _filtered(GenerationRow.select(*RECORD_COLUMNS), log_filter)
    rows = await query.order_by(GenerationRow.logged_at, GenerationRow.id, ascending=False).limit(limit).offset(offset)
    return [_record(row) for row in rows]


async def record(job_id: str) -> GenerationRecord | None:
    row = await GenerationRow.select(*RECORD_COLUMNS).where(GenerationRow.job_id == job_id).first()
    return None if row is None else _record(row)


async def figure_inputs(log_filter: LogFilter) -> list[FigureInput]:
    rows = await _filtered(GenerationRow.select(*FIGURE_COLUMNS), log_filter)
    return msgspec.convert([_decoded(row) for row in rows], list[FigureInput], strict=False)


# -- the generation log: merged job states --------------------------------------------------------------


def _row_values(state: JobState) -> dict[str, Any]:
    values = msgspec.to_builtins(state)
    for name in JSON_COLUMNS:
        values[name] = None if values[name] is None else msgspec.json.encode(values[name]).decode()
    return values


# The merge's statements go to the database as SQL (contracts.runtime.database.run_raw): piccolo's insert and update
# built a query object per row and compiled it, ~90 % of the CPU the stats service spent writing the log.
_STATE_COLUMNS = tuple(f.name for f in msgspec.structs.fields(JobState))  # every column but `id`
_QUOTED_STATE_COLUMNS = database.quoted_columns(_STATE_COLUMNS)
_ROW_MARKS = f"({database.marks(len(_STATE_COLUMNS))})"


async def load_states(job_ids: Sequence[str], *, lock: bool = False) -> dict[str, JobState]:
    """The stored states of `job_ids` (those logged); `lock`: inside a write transaction, FOR UPDATE."""
    if not job_ids:
        return {}
    sql = f"SELECT {_QUOTED_STATE_COLUMNS} FROM generation WHERE job_id IN ({database.marks(len(job_ids))})"
    if lock and not is_sqlite():
        sql += " FOR UPDATE"
    rows = await database.run_raw(GenerationRow, sql, *job_ids)
    states = [msgspec.convert(_decoded(row), JobState, strict=False) for row in rows]
    return {state.job_id: state for state in states}


async def insert_states(states: Sequence[JobState]) -> None:
    for start in range(0, len(states), INSERT_CHUNK):
        chunk = states[start : start + INSERT_CHUNK]
        rows = ", ".join([_ROW_MARKS] * len(chunk))
        args = [values[name] for values in map(_row_values, chunk) for name in _STATE_COLUMNS]
        await database.run_raw(GenerationRow, f"INSERT INTO generation ({_QUOTED_STATE_COLUMNS}) VALUES {rows}", *args)


async def update_states(changes: Sequence[tuple[JobState, JobState]]) -> None:
    """Each (stored, merged) pair: the row set to `merged`. Only the columns that differ are written (the stored
    state was read in this write transaction): a smaller statement to build and to run than every column."""
    for stored, merged in changes:
        old, new = _row_values(stored), _row_values(merged)
        values = {name: value for name, value in new.items() if old.get(name) != value}
        if values:
            sql = f"UPDATE generation SET {database.assignments(values)} WHERE job_id = {{}}"
            await database.run_raw(GenerationRow, sql, *values.values(), merged.job_id)


# -- the generation log: retention -----------------------------------------------------------------------


class ImageRow(msgspec.Struct, frozen=True):
    """A logged job whose output files are still kept."""

    id: int
    job_id: str
    outputs: list[OutputFile]


async def image_rows(cutoff: float, after_id: int, limit: int) -> list[ImageRow]:
    """Up to `limit` jobs logged before `cutoff` that still have images, by id, after `after_id`."""
    rows = await (
        GenerationRow.select(GenerationRow.id, GenerationRow.job_id, GenerationRow.outputs)
        .where(
            GenerationRow.logged_at < cutoff,
            GenerationRow.images_removed == False,  # noqa: E712 (a piccolo condition, not a comparison)
            GenerationRow.output_count > 0,
            GenerationRow.id > after_id,
        )
        .order_by(GenerationRow.id)
        .limit(limit)
    )
    return [msgspec.convert({**_decoded(row), "id": row["id"]}, ImageRow, strict=False) for row in rows]


async def mark_images_removed(job_ids: list[str], now: float) -> None:
    async with write_transaction():
        await GenerationRow.update({GenerationRow.images_removed: True, GenerationRow.images_removed_at: now}).where(
            GenerationRow.job_id.is_in(job_ids)
        )


async def remove_log_rows(cutoff: float, *, dry_run: bool) -> tuple[int, int]:
    """(rows removed, rows waiting for their images to be removed first); a dry run counts the old rows."""
    old = GenerationRow.logged_at < cutoff
    if dry_run:  # a real run removes their images first
        return int(await GenerationRow.count().where(old)), 0
    cleared = (GenerationRow.images_removed == True) | (GenerationRow.output_count == 0)  # noqa: E712
    async with write_transaction():
        removable = int(await GenerationRow.count().where(old, cleared))
        waiting = int(await GenerationRow.count().where(old)) - removable
        if removable:
            await GenerationRow.delete().where(old, cleared)
    return removable, waiting


# -- the retention policy (a single row) -------------------------------------------------------------------


class PolicyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The stored policy and the outcome of its last run."""

    id: int
    keep_images_days: int
    keep_log_days: int
    run_every_hours: float
    updated_at: float | None
    last_run_at: float | None
    last_report: RetentionReport | None


def _policy_record(row: dict[str, Any]) -> PolicyRecord:
    raw = row["last_report"]
    report = None
    if isinstance(raw, (str, bytes)) and raw not in ("", "null"):
        report = msgspec.json.decode(raw, type=RetentionReport)
    values = {k: v for k, v in row.items() if k != "last_report"}
    return msgspec.convert({**values, "last_report": report}, PolicyRecord, strict=False)


async def _first_policy() -> PolicyRecord | None:
    row = await RetentionRow.select().order_by(RetentionRow.id).first()
    return None if row is None else _policy_record(row)


async def policy() -> PolicyRecord:
    """The single policy row, created with the defaults on first use; the schedule starts counting then."""
    found = await _first_policy()
    if found is not None:
        return found
    async with write_transaction():
        found = await _first_policy()
        if found is None:
            defaults = RetentionPolicy()
            await RetentionRow.insert(
                RetentionRow(
                    keep_images_days=defaults.keep_images_days,
                    keep_log_days=defaults.keep_log_days,
                    run_every_hours=defaults.run_every_hours,
                    last_run_at=time.time(),
                )
            )
            found = await _first_policy()
    assert found is not None
    return found


async def save_policy(new: RetentionPolicy) -> None:
    stored = await policy()
    await RetentionRow.update(
        {
            RetentionRow.keep_images_days: new.keep_images_days,
            RetentionRow.keep_log_days: new.keep_log_days,
            RetentionRow.run_every_hours: new.run_every_hours,
            RetentionRow.updated_at: time.time(),
        }
    ).where(RetentionRow.id == stored.id)


async def claim_run(now: float, is_due: Callable[[PolicyRecord], bool]) -> bool:
    """Set last_run_at to `now` if `is_due(policy)`, read and written in one transaction (one replica wins)."""
    await policy()
    async with write_transaction():
        stored = await _first_policy()
        assert stored is not None
        if not is_due(stored):
            return False
        await RetentionRow.update({RetentionRow.last_run_at: now}).where(RetentionRow.id == stored.id)
    return True


async def save_report(report: RetentionReport) -> None:
    stored = await policy()
    await RetentionRow.update(
        {
            RetentionRow.last_run_at: report.ran_at,
            RetentionRow.last_report: msgspec.json.encode(report).decode(),
        }
    ).where(RetentionRow.id == stored.id)
