"""The dispatch service's storage: job rows and instance rows (the only module that reads or writes its tables).

Rows come back as msgspec Structs: a job as `JobRecord` (its JSON columns decoded into their types), an instance
as the contract's `Instance`. Values written go through `msgspec.to_builtins`, so callers may pass Structs. The
rules (what a status change means, instance validation) live in jobs.py, scheduler.py and instances.py.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.custom_types import Combinable
from piccolo.query.functions.aggregate import Count, Min

from contracts.errors import ErrorCode, HubError
from contracts.messages.base import struct_from
from contracts.messages.instances import Instance
from contracts.messages.jobs import FINAL_STATUSES, GenerationRequest, OutputFile
from contracts.messages.render_types import Requirements
from contracts.runtime.database import assignments, marks, quoted_columns, run_raw, write_transaction
from dispatch_service.tables import InstanceRow, JobRow

if TYPE_CHECKING:
    from dispatch_service.jobs import PreparedJob

WAITING_STATUSES = ("accepted", "queued")  # not yet running: they have a place in the queue
ACTIVE_STATUSES = (*WAITING_STATUSES, "running", "cancelling")
RUNNING_STATUSES = ("running", "cancelling")  # on an instance (a cancel may be landing)


class RunningJobRow(msgspec.Struct, kw_only=True):
    job_id: str
    instance: str | None
    render_type: str
    api_key_id: str | None = None
    started_at: float | None = None


class JobFailure(msgspec.Struct, frozen=True):
    """Why an earlier attempt of a job ended."""

    instance: str
    reason: str
    at: float


class JobRecord(msgspec.Struct, kw_only=True):
    """A job row. `request` is the GenerationRequest as stored (input image bytes left out) and `workflow` the
    resolved ComfyUI API workflow: JSON documents, kept as such."""

    id: int
    job_id: str
    status: str
    render_type: str
    render_type_version: int = 0
    output_kind: str = "image"
    request: dict[str, Any] = {}
    workflow: dict[str, Any] = {}
    requirements: Requirements = msgspec.field(default_factory=Requirements)
    positive_prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    enhancement_error: str | None = None
    seed: str | None = None  # text: up to 2**63 keeps every digit on every database
    width: int | None = None
    height: int | None = None
    input_image_id: str | None = None
    instance: str | None = None
    stream_seq: int | None = None
    delivery: int = 0
    attempts: int = 0
    failures: list[JobFailure] = []
    progress_value: int = 0
    progress_max: int = 0
    progress_percent: float = 0.0
    outputs: list[OutputFile] = []
    error: str | None = None
    api_key_id: str | None = None
    client_name: str | None = None
    accepted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


_EMPTY_WHEN_NULL = {"request": {}, "workflow": {}, "styles": [], "failures": [], "outputs": [], "progress_percent": 0.0}


class WaitingKey(msgspec.Struct, frozen=True):
    api_key_id: str | None
    oldest_accepted_at: float
    waiting: int
    request: dict[str, Any]  # the key's newest waiting job's request: its weight and max_running


class KeyRun(msgspec.Struct, frozen=True):
    job_id: str
    api_key_id: str | None
    status: str
    started_at: float
    finished_at: float | None


def _job(row: dict[str, Any]) -> JobRecord:
    for name, empty in _EMPTY_WHEN_NULL.items():
        if row.get(name) is None:
            row[name] = empty
    return msgspec.convert(row, JobRecord, strict=False)


# A job's hot statements (its row by id, its status changes, its claim) are plain SQL, the same on SQLite and
# PostgreSQL: piccolo builds a statement in ~0.3 ms, more than SQLite takes to run it, and a job makes several.
_JOB_COLUMNS = [column._meta.db_column_name for column in JobRow._meta.columns]
_JSON_COLUMNS = frozenset(column._meta.db_column_name for column in JobRow._meta.json_columns)
_SELECT_JOB = f"SELECT {quoted_columns(_JOB_COLUMNS)} FROM job WHERE job_id = {{}}"


def _row_of(raw: dict[str, Any]) -> dict[str, Any]:
    """A row as piccolo's load_json gives it: its JSON columns decoded (drivers hand them over as text)."""
    for name in _JSON_COLUMNS:
        value = raw.get(name)
        if isinstance(value, (str, bytes)):
            raw[name] = msgspec.json.decode(value)
    return raw


_json_encoder = msgspec.json.Encoder()


def _encoded(values: dict[str, Any]) -> list[Any]:
    """The arguments of these column values, JSON columns as JSON text (as piccolo writes them)."""
    unknown = set(values) - set(_JOB_COLUMNS)
    if unknown:
        raise ValueError(f"not columns of the job table: {sorted(unknown)}")
    # A JSON column's value is encoded straight (Structs included), not copied into builtins first.
    return [
        (_json_text(value) if value is not None else None) if name in _JSON_COLUMNS else msgspec.to_builtins(value)
        for name, value in values.items()
    ]


def _json_text(value: Any) -> str:
    return _json_encoder.encode(value).decode()


def _assignments(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """`"a" = {}, "b" = {}` and its arguments."""
    return assignments(values), _encoded(values)


# A new row as piccolo's insert writes it: every column but the key, those not given at their defaults.
_NEW_JOB: dict[str, Any] = {
    column._meta.db_column_name: column.get_default_value()
    for column in JobRow._meta.columns
    if column is not JobRow._meta.primary_key
}
_NEW_JOB.update({name: msgspec.json.decode(_NEW_JOB[name]) for name in _JSON_COLUMNS})  # defaults given as text
_INSERT_JOB = "INSERT INTO job (" + quoted_columns(_NEW_JOB) + f") VALUES ({marks(len(_NEW_JOB))}) RETURNING id"
# How many rows inserted here are kept for their job's first fetch (JobStore.take_fresh): enough for the jobs of a
# burst, bounded for a deep queue (the oldest are dropped; their fetch reads the row as before).
FRESH_KEPT = 256


# The pull loop's statements, asked before each job is taken (see fair_share.py).
_ANY_WAITING = f"SELECT 1 AS one FROM job WHERE status IN ({marks(len(WAITING_STATUSES))}) LIMIT 1"
_WAITING_KEYS = (
    "SELECT waiting_key.api_key_id, oldest, waiting, job.request FROM (SELECT api_key_id, MIN(accepted_at) AS oldest, "
    f"MAX(id) AS newest, COUNT(*) AS waiting FROM job WHERE status IN ({marks(len(WAITING_STATUSES))}) "
    "GROUP BY api_key_id) AS waiting_key JOIN job ON job.id = waiting_key.newest"
)


def _request_for_record(request: GenerationRequest) -> dict[str, Any]:
    """The request as stored and published: input image bytes are kept in storage, not in every copy."""
    raw = msgspec.to_builtins(request)
    if request.input_image is not None and request.input_image.base64:
        raw["input_image"] = {"base64": f"<{len(request.input_image.base64)} base64 characters>"}
    return raw


class WaitingLimitError(Exception):
    """The job's key has its `max_waiting` jobs waiting already: the job was not recorded."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} jobs of the key wait")
        self.waiting = waiting


def _ahead_of(job: JobRecord) -> Combinable:
    """Jobs accepted before `job` (at the same time: inserted before it). Written as a range on accepted_at, so the
    count walks only the jobs ahead in the waiting-order indexes (migrations 2026-12-02T09:20, T10:20), not all."""
    return (JobRow.accepted_at <= job.accepted_at) & ((JobRow.accepted_at < job.accepted_at) | (JobRow.id < job.id))


def _behind(job: JobRecord) -> Combinable:
    """Jobs accepted after `job` (at the same time: inserted after it); the mirror of `_ahead_of`."""
    return (JobRow.accepted_at >= job.accepted_at) & ((JobRow.accepted_at > job.accepted_at) | (JobRow.id > job.id))


class JobStore:
    """Job rows: the only place that reads or writes them."""

    def __init__(self) -> None:
        # Counts the writes of job rows made here: a reader sharing what it read of them compares it.
        self.writes = 0
        # The rows inserted here and not yet fetched, as written (their status kept by this store's transitions).
        self._fresh: dict[str, JobRecord] = {}

    async def insert(self, job: PreparedJob, *, max_waiting: int | None = None) -> None:
        """Record an accepted job. With `max_waiting`, only while its key has fewer jobs waiting (counted and
        inserted in one write transaction, so submissions at once, on any replica, never pass the limit together);
        else WaitingLimitError, nothing recorded."""
        key = job.request.api_key_id
        if max_waiting is None or key is None:
            await self._insert(job)
            return
        async with write_transaction(JobRow._meta.db):
            waiting = await self.waiting_of(key)
            if waiting >= max_waiting:
                raise WaitingLimitError(waiting)
            await self._insert(job)

    async def _insert(self, job: PreparedJob) -> None:
        self.writes += 1
        params = job.resolved.params
        values = {
            **_NEW_JOB,
            "job_id": job.job_id,
            "status": "accepted",
            "render_type": job.resolved.render_type,
            "render_type_version": job.resolved.version,
            "output_kind": job.resolved.output_kind,
            "request": _request_for_record(job.request),
            "workflow": job.resolved.workflow,
            "requirements": job.resolved.requirements,
            "positive_prompt": job.built.positive,
            "negative_prompt": job.built.negative,
            "styles": job.built.styles_applied,
            "enhancement_error": job.built.enhancement_error,
            "seed": str(params.seed) if params.seed is not None else None,
            "width": params.width,
            "height": params.height,
            "input_image_id": job.input_image_id,
            "api_key_id": job.request.api_key_id,
            "client_name": job.request.client_name,
            "accepted_at": job.accepted_at,
        }
        rows = await run_raw(JobRow, _INSERT_JOB, *_encoded(values))
        self._fresh[job.job_id] = msgspec.convert({**values, "id": rows[0]["id"]}, JobRecord, strict=False)
        if len(self._fresh) > FRESH_KEPT:
            del self._fresh[next(iter(self._fresh))]

    def take_fresh(self, job_id: str) -> JobRecord | None:
        """The row of a job inserted here, as written then, once (None: not inserted here, written since by other
        than a status change here, or dropped). Its status may be stale only by other replicas' writes, so it may
        stand for the row at the job's first delivery: its claim (a conditional write) still decides whether it
        runs; a job cancelled meanwhile is then not claimed."""
        return self._fresh.pop(job_id, None)

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await run_raw(JobRow, _SELECT_JOB, job_id)
        return _job(_row_of(rows[0])) if rows else None

    async def require(self, job_id: str) -> JobRecord:
        record = await self.get(job_id)
        if record is None:
            raise HubError(ErrorCode.NOT_FOUND, f"no job with id {job_id!r}", field="job_id")
        return record

    async def transition(self, job_id: str, from_statuses: tuple[str, ...], **values: Any) -> bool:
        """Update the job only if it is in one of `from_statuses`; False if it was not (e.g. cancelled)."""
        self.writes += 1
        set_list, args = _assignments(values)
        statuses = marks(len(from_statuses))
        sql = f"UPDATE job SET {set_list} WHERE job_id = {{}} AND status IN ({statuses}) RETURNING id"
        changed = bool(await run_raw(JobRow, sql, *args, job_id, *from_statuses))
        fresh = self._fresh.pop(job_id, None)
        if changed and fresh is not None and values.keys() == {"status"}:
            self._fresh[job_id] = msgspec.structs.replace(fresh, status=values["status"])
        return changed

    async def claim(
        self, job_id: str, stream_seq: int, delivery: int, *, adopting: bool = False, **values: Any
    ) -> bool:
        """Take the job to run it from delivery `delivery` (JetStream's num_delivered) of stream message
        `stream_seq`: a waiting job, or a running one whose runner died, from a later delivery of the same message
        (`adopting`: the delivery that claimed it, followed on ComfyUI by the dead runner's successor). A second
        message for the same job, or an earlier delivery (its replica stalled while the job was handed back and
        delivered again), never claims it."""
        self.writes += 1
        self._fresh.pop(job_id, None)
        set_list, args = _assignments({**values, "stream_seq": stream_seq, "delivery": delivery})
        later = "<=" if adopting else "<"
        sql = (
            f"UPDATE job SET {set_list} WHERE job_id = {{}} AND (status IN ({marks(len(WAITING_STATUSES))}) "
            f"OR (status = {{}} AND stream_seq = {{}} AND delivery {later} {{}})) RETURNING id"
        )
        running = ("running", stream_seq, delivery)
        return bool(await run_raw(JobRow, sql, *args, job_id, *WAITING_STATUSES, *running))

    async def set(self, job_id: str, **values: Any) -> None:
        self.writes += 1
        self._fresh.pop(job_id, None)
        set_list, args = _assignments(values)
        await run_raw(JobRow, f"UPDATE job SET {set_list} WHERE job_id = {{}}", *args, job_id)

    async def mark_outputs_removed(self, job_ids: list[str], gone: AbstractSet[str], at: float) -> None:
        """Stamp `removed_at` on the outputs in `gone` of these jobs (a job's other outputs stay as they are)."""
        rows = (
            await JobRow.select(JobRow.job_id, JobRow.outputs)
            .where(JobRow.job_id.is_in(job_ids))
            .output(load_json=True)
        )
        for row in rows:
            outputs = row["outputs"] or []
            marked = [{**o, "removed_at": o.get("removed_at") or at} if o["output_id"] in gone else o for o in outputs]
            if marked != outputs:
                await JobRow.update({JobRow.outputs: marked}).where(JobRow.job_id == row["job_id"])

    async def active(self, limit: int) -> list[JobRecord]:
        rows = (
            await JobRow.select()
            .where(JobRow.status.is_in(list(ACTIVE_STATUSES)))
            .order_by(JobRow.accepted_at)
            .limit(limit)
            .output(load_json=True)
            .run()
        )
        return [_job(row) for row in rows]

    async def recent(self, limit: int) -> list[JobRecord]:
        rows = await JobRow.select().order_by(JobRow.accepted_at, ascending=False).limit(limit).output(load_json=True)
        return [_job(row) for row in rows]

    async def waiting_by_render_type(self) -> dict[str, tuple[int, float]]:
        """For the figures: per render type, how many jobs wait and when the oldest of them was accepted."""
        rows = (
            await JobRow.select(
                JobRow.render_type, Count().as_alias("waiting"), Min(JobRow.accepted_at).as_alias("oldest")
            )
            .where(JobRow.status.is_in(list(WAITING_STATUSES)))
            .group_by(JobRow.render_type)
            .run()
        )
        return {row["render_type"]: (int(row["waiting"]), float(row["oldest"])) for row in rows}

    async def queue_position(self, job: JobRecord) -> int:
        """Where a waiting job stands: 1 + the waiting jobs accepted before it (counted, not loaded)."""
        waiting = JobRow.status.is_in(list(WAITING_STATUSES))
        return await JobRow.count().where(waiting & _ahead_of(job)).run() + 1

    async def key_queue_position(self, job: JobRecord, *, key_waiting: int | None = None) -> int:
        """Where a waiting job stands among the waiting jobs of its own API key (1: the key's next). Given how many
        of the key's jobs wait (`key_waiting`), the jobs after it are counted instead of those before it."""
        same_key = JobRow.api_key_id.is_null() if job.api_key_id is None else JobRow.api_key_id == job.api_key_id
        waiting = JobRow.status.is_in(list(WAITING_STATUSES)) & same_key
        if key_waiting is not None:
            behind = await JobRow.count().where(waiting & _behind(job)).run()
            return max(1, key_waiting - behind)
        return await JobRow.count().where(waiting & _ahead_of(job)).run() + 1

    # builtins.set: inside JobStore, `set` is the method of that name.
    async def running_of(self, api_key_id: str) -> builtins.set[str]:
        """The job ids of one key's jobs running now (cancelling included: they still hold a slot)."""
        rows = await JobRow.select(JobRow.job_id).where(
            JobRow.status.is_in(["running", "cancelling"]) & (JobRow.api_key_id == api_key_id)
        )
        return {row["job_id"] for row in rows}

    async def running_now(self) -> list[RunningJobRow]:
        """Every job on an instance now (cancelling included), oldest start first: the dashboard's view."""
        rows = (
            await JobRow.select(*(getattr(JobRow, name) for name in RunningJobRow.__struct_fields__))
            .where(JobRow.status.is_in(list(RUNNING_STATUSES)))
            .order_by(JobRow.started_at)
            .run()
        )
        return msgspec.convert(rows, list[RunningJobRow])

    async def waiting_by_key(self) -> dict[str | None, int]:
        """How many jobs wait per API key (None: jobs made without a key)."""
        rows = (
            await JobRow.select(JobRow.api_key_id, Count().as_alias("waiting"))
            .where(JobRow.status.is_in(list(WAITING_STATUSES)))
            .group_by(JobRow.api_key_id)
            .run()
        )
        return {row["api_key_id"]: int(row["waiting"]) for row in rows}

    async def started_by_instance(self, since: float) -> dict[str, int]:
        """How many jobs started on each instance since `since` (their last attempt's start), whatever their end."""
        rows = (
            await JobRow.select(JobRow.instance, Count().as_alias("started"))
            .where(JobRow.started_at.is_not_null() & (JobRow.started_at >= since) & JobRow.instance.is_not_null())
            .group_by(JobRow.instance)
            .run()
        )
        return {row["instance"]: int(row["started"]) for row in rows}

    async def waiting_of(self, api_key_id: str) -> int:
        """How many of one key's jobs wait (accepted or queued, not yet running)."""
        return (
            await JobRow.count()
            .where(JobRow.status.is_in(list(WAITING_STATUSES)) & (JobRow.api_key_id == api_key_id))
            .run()
        )

    async def recent_run_s(self, sample: int = 20) -> float | None:
        """The mean run time of the last `sample` completed jobs, in seconds; None before any completed."""
        rows = (
            await JobRow.select(JobRow.started_at, JobRow.finished_at)
            .where((JobRow.status == "completed") & JobRow.started_at.is_not_null())
            .order_by(JobRow.finished_at, ascending=False)
            .limit(sample)
            .run()
        )
        runs = [row["finished_at"] - row["started_at"] for row in rows if row["finished_at"] is not None]
        return sum(runs) / len(runs) if runs else None

    async def of_caller(self, api_key_id: str | None, limit: int, after: tuple[float, str] | None) -> list[JobRecord]:
        """A caller's jobs, newest first, from just after `after` = (accepted_at, job_id) of the last one seen."""
        mine: Combinable = JobRow.api_key_id.is_null() if api_key_id is None else JobRow.api_key_id == api_key_id
        if after is not None:
            accepted_at, job_id = after
            older = (JobRow.accepted_at < accepted_at) | (
                (JobRow.accepted_at == accepted_at) & (JobRow.job_id < job_id)
            )
            mine = mine & older
        rows = (
            await JobRow.select()
            .where(mine)
            .order_by(JobRow.accepted_at, JobRow.job_id, ascending=False)
            .limit(limit)
            .output(load_json=True)
            .run()
        )
        return [_job(row) for row in rows]

    async def unqueued(self) -> list[tuple[str, str | None]]:
        """(job id, API key id) of the jobs recorded but not yet put on the job stream."""
        rows = await JobRow.select(JobRow.job_id, JobRow.api_key_id).where(JobRow.status == "accepted").run()
        return [(row["job_id"], row["api_key_id"]) for row in rows]

    async def waiting_jobs(self, limit: int) -> list[tuple[str, str | None]]:
        """(job id, API key id) of the oldest `limit` waiting jobs, oldest first."""
        rows = (
            await JobRow.select(JobRow.job_id, JobRow.api_key_id)
            .where(JobRow.status.is_in(list(WAITING_STATUSES)))
            .order_by(JobRow.accepted_at)
            .limit(limit)
            .run()
        )
        return [(row["job_id"], row["api_key_id"]) for row in rows]

    # -- fair share (see fair_share.py) --

    async def any_waiting(self) -> bool:
        return bool(await run_raw(JobRow, _ANY_WAITING, *WAITING_STATUSES))

    async def running_keys(self) -> list[str | None]:
        """The API keys with jobs running (None: jobs without a key)."""
        rows = await JobRow.select(JobRow.api_key_id).where(JobRow.status.is_in(list(RUNNING_STATUSES))).distinct()
        return [row["api_key_id"] for row in rows]

    async def waiting_keys(self) -> list[WaitingKey]:
        """Per API key with jobs waiting (None: jobs without a key): when its oldest waiting job was accepted, and
        the request of its newest one (which carries the key's current weight and running limit)."""
        rows = await run_raw(JobRow, _WAITING_KEYS, *WAITING_STATUSES)
        return [
            WaitingKey(
                api_key_id=row["api_key_id"],
                oldest_accepted_at=float(row["oldest"]),
                waiting=int(row["waiting"]),
                request=_row_of(row)["request"] or {},
            )
            for row in rows
        ]

    async def run_time_since(self, since: float) -> dict[str | None, float]:
        """Per API key, the run time of its jobs that started at or after `since` and have ended (summed in the
        database: the window's rows are not loaded)."""
        final = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
        rows = await JobRow.raw(
            "SELECT api_key_id, SUM(finished_at - started_at) AS run_s FROM job "
            # finished_at >= since follows from started_at >= since; said, it lets the (status, finished_at) index
            # walk only the window's jobs, not every ended job of the history (78 ms at 10,000 ended, in SQLite).
            f"WHERE started_at >= {{}} AND finished_at >= {{}} AND status IN ({final}) GROUP BY api_key_id",
            since,
            since,
        )
        return {row["api_key_id"]: max(float(row["run_s"] or 0.0), 0.0) for row in rows}

    async def running_runs(self) -> list[KeyRun]:
        """The jobs on an instance now, by API key."""
        rows = await JobRow.select(
            JobRow.job_id, JobRow.api_key_id, JobRow.status, JobRow.started_at, JobRow.finished_at
        ).where(JobRow.status.is_in(list(RUNNING_STATUSES)) & JobRow.started_at.is_not_null())
        return msgspec.convert(rows, list[KeyRun])


# -- instances ---------------------------------------------------------------------------------------------


def _instance(row: dict[str, Any]) -> Instance:
    return struct_from(Instance, row, tags=list(row["tags"] or []))


def instance_transaction() -> Any:
    return write_transaction(InstanceRow._meta.db)


async def instances() -> list[Instance]:
    rows = await InstanceRow.select().order_by(InstanceRow.name).output(load_json=True).run()
    return [_instance(row) for row in rows]


async def find_instance(name: str) -> Instance | None:
    """The stored instance (its auth header unmasked), or None."""
    row = await InstanceRow.select().where(InstanceRow.name == name).first().output(load_json=True).run()
    return None if row is None else _instance(row)


def _instance_columns(instance: Instance) -> dict[Any, Any]:
    return {
        InstanceRow.name: instance.name,
        InstanceRow.base_url: instance.base_url,
        InstanceRow.enabled: instance.enabled,
        InstanceRow.slots: instance.slots,
        InstanceRow.weight: instance.weight,
        InstanceRow.auth_header: instance.auth_header,
        InstanceRow.tags: instance.tags,
        InstanceRow.updated_at: time.time(),
    }


async def insert_instance(instance: Instance) -> None:
    values = {column._meta.name: value for column, value in _instance_columns(instance).items()}
    await InstanceRow.insert(InstanceRow(**values, created_at=values["updated_at"])).run()


async def update_instance(original_name: str, instance: Instance) -> None:
    await InstanceRow.update(_instance_columns(instance)).where(InstanceRow.name == original_name).run()


async def delete_instance(name: str) -> None:
    await InstanceRow.delete().where(InstanceRow.name == name).run()
