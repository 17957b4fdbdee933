"""Retention: the admin's policy, and the run that removes old output files and old log rows.

Output files belong to the dispatcher (JetStream Object Store); the run asks it to delete them through an
`OutputRemover` and marks a job's row `images_removed` only for files the dispatcher confirmed deleted (or already
gone). A log row is removed only once its images are: the run finds images through their rows, so a row removed
first would leave its files behind for ever. When the dispatcher does not answer, nothing is marked, the report
says so, and the next run tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import DeletedOutputs, OutputFile
from contracts.messages.stats import RetentionPolicy, RetentionReport
from stats_service.db import write_transaction
from stats_service.tables import GenerationRow, RetentionRow

DAY_S = 86400
DELETE_CHUNK = 100  # output ids per request to the dispatcher
SCAN_PAGE = 500  # log rows read at a time
RETRY_AFTER_FAILURE_S = 15 * 60  # a run that could not finish is tried again this soon (or at the next run)
MAX_SLEEP_S = 60.0  # the scheduler looks again at least this often (another replica may have changed the policy)

# (output ids, the jobs they belong to) -> what the dispatcher deleted; it marks those outputs removed in the jobs.
OutputRemover = Callable[[list[str], list[str]], Awaitable[DeletedOutputs]]
Trigger = Literal["request", "schedule"]


def check_policy(policy: RetentionPolicy) -> None:
    images, log = policy.keep_images_days, policy.keep_log_days
    if log and (images == 0 or log < images):
        kept = "forever (0)" if images == 0 else f"{images} days"
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"keep_log_days ({log}) is shorter than keep_images_days ({kept}): a job's log row must live at least "
            f"as long as its images, because retention finds the images through the row; set keep_log_days to 0 "
            f"(forever){'' if images == 0 else f' or to at least {images}'}",
            field="policy.keep_log_days",
            details={"keep_images_days": images, "keep_log_days": log},
        )


def cutoffs(policy: RetentionPolicy, now: float) -> tuple[float | None, float | None]:
    """(images cutoff, log cutoff): what was logged before them goes; None keeps it forever."""
    images = now - policy.keep_images_days * DAY_S if policy.keep_images_days else None
    log = now - policy.keep_log_days * DAY_S if policy.keep_log_days else None
    return images, log


# -- the policy row ------------------------------------------------------------------------------------


async def _policy_row() -> dict[str, Any]:
    """The single policy row, created with the defaults on first use; the schedule starts counting then."""
    row = await RetentionRow.select().order_by(RetentionRow.id).first()
    if row is not None:
        return row
    async with write_transaction():
        row = await RetentionRow.select().order_by(RetentionRow.id).first()
        if row is None:
            defaults = RetentionPolicy()
            await RetentionRow.insert(
                RetentionRow(
                    keep_images_days=defaults.keep_images_days,
                    keep_log_days=defaults.keep_log_days,
                    run_every_hours=defaults.run_every_hours,
                    last_run_at=time.time(),
                )
            )
            row = await RetentionRow.select().order_by(RetentionRow.id).first()
    assert row is not None
    return row


def _last_report(row: dict[str, Any]) -> RetentionReport | None:
    raw = row["last_report"]
    if raw in (None, "", "null"):
        return None
    return msgspec.json.decode(raw, type=RetentionReport) if isinstance(raw, (str, bytes)) else None


def _next_run_at(row: dict[str, Any]) -> float:
    if row["last_run_at"] is None:
        return time.time()
    interval = row["run_every_hours"] * 3600
    last = _last_report(row)
    if last is not None and last.error is not None:
        interval = min(interval, RETRY_AFTER_FAILURE_S)
    return float(row["last_run_at"]) + interval


def _policy_of(row: dict[str, Any]) -> RetentionPolicy:
    return RetentionPolicy(
        keep_images_days=row["keep_images_days"],
        keep_log_days=row["keep_log_days"],
        run_every_hours=row["run_every_hours"],
        updated_at=row["updated_at"],
        last_run=_last_report(row),
        next_run_at=_next_run_at(row),
    )


async def get_policy() -> RetentionPolicy:
    return _policy_of(await _policy_row())


async def save_policy(policy: RetentionPolicy) -> RetentionPolicy:
    check_policy(policy)
    row = await _policy_row()
    await RetentionRow.update(
        {
            RetentionRow.keep_images_days: policy.keep_images_days,
            RetentionRow.keep_log_days: policy.keep_log_days,
            RetentionRow.run_every_hours: policy.run_every_hours,
            RetentionRow.updated_at: time.time(),
        }
    ).where(RetentionRow.id == row["id"])
    return await get_policy()


async def claim_due_run(now: float) -> bool:
    """Take the scheduled run if it is due and no replica took it yet (the claim is the new last_run_at)."""
    await _policy_row()
    async with write_transaction():
        row = await RetentionRow.select().order_by(RetentionRow.id).first()
        assert row is not None
        if now < _next_run_at(row):
            return False
        await RetentionRow.update({RetentionRow.last_run_at: now}).where(RetentionRow.id == row["id"])
    return True


async def seconds_until_due(now: float) -> float:
    return _next_run_at(await _policy_row()) - now


async def _store_report(report: RetentionReport) -> None:
    row = await _policy_row()
    await RetentionRow.update(
        {
            RetentionRow.last_run_at: report.ran_at,
            RetentionRow.last_report: msgspec.json.encode(report).decode(),
        }
    ).where(RetentionRow.id == row["id"])


# -- the run ------------------------------------------------------------------------------------------------


class _Tally(msgspec.Struct, kw_only=True):
    images_removed: int = 0
    images_missing: int = 0
    bytes_freed: int = 0
    jobs_cleared: int = 0
    error: str | None = None


def _outputs(row: dict[str, Any]) -> list[OutputFile]:
    raw = row["outputs"]
    return msgspec.json.decode(raw, type=list[OutputFile]) if isinstance(raw, (str, bytes)) else []


async def _image_rows(cutoff: float, after_id: int) -> list[dict[str, Any]]:
    return await (
        GenerationRow.select(GenerationRow.id, GenerationRow.job_id, GenerationRow.outputs)
        .where(
            GenerationRow.logged_at < cutoff,
            GenerationRow.images_removed == False,  # noqa: E712 (a piccolo condition, not a comparison)
            GenerationRow.output_count > 0,
            GenerationRow.id > after_id,
        )
        .order_by(GenerationRow.id)
        .limit(SCAN_PAGE)
    )


def _chunks(rows: list[tuple[str, list[OutputFile]]]) -> list[list[tuple[str, list[OutputFile]]]]:
    """Rows grouped so that one request carries up to DELETE_CHUNK ids and a row is never split."""
    chunks: list[list[tuple[str, list[OutputFile]]]] = []
    current: list[tuple[str, list[OutputFile]]] = []
    size = 0
    for job_id, outputs in rows:
        if current and size + len(outputs) > DELETE_CHUNK:
            chunks.append(current)
            current, size = [], 0
        current.append((job_id, outputs))
        size += len(outputs)
    if current:
        chunks.append(current)
    return chunks


async def _remove_images(cutoff: float, remover: OutputRemover, *, dry_run: bool, now: float) -> _Tally:
    tally = _Tally()
    after_id = 0
    while True:
        page = await _image_rows(cutoff, after_id)
        if not page:
            return tally
        after_id = page[-1]["id"]
        rows = [(row["job_id"], _outputs(row)) for row in page]
        if dry_run:
            tally.images_removed += sum(len(outputs) for _, outputs in rows)
            tally.bytes_freed += sum(o.size for _, outputs in rows for o in outputs)
            tally.jobs_cleared += len(rows)
            continue
        for chunk in _chunks(rows):
            asked = [o.output_id for _, outputs in chunk for o in outputs]
            try:
                reply = await remover(asked, [job_id for job_id, _ in chunk])
            except HubError as exc:
                tally.error = (
                    f"the dispatcher did not delete output files ({exc}); no job was marked images_removed for "
                    "them, the next run tries again"
                )
                return tally
            deleted, missing = set(reply.deleted) & set(asked), set(reply.missing) & set(asked)
            sizes = {o.output_id: o.size for _, outputs in chunk for o in outputs}
            tally.images_removed += len(deleted)
            tally.images_missing += len(missing - deleted)
            tally.bytes_freed += sum(sizes[i] for i in deleted)
            confirmed = [job_id for job_id, outputs in chunk if all(o.output_id in deleted | missing for o in outputs)]
            if len(confirmed) < len(chunk):
                unconfirmed = len(set(asked) - deleted - missing)
                tally.error = (
                    f"the dispatcher did not confirm {unconfirmed} of the output files it was asked to delete; "
                    "their jobs keep images_removed=false and the next run tries again"
                )
            if confirmed:
                async with write_transaction():
                    await GenerationRow.update(
                        {GenerationRow.images_removed: True, GenerationRow.images_removed_at: now}
                    ).where(GenerationRow.job_id.is_in(confirmed))
                tally.jobs_cleared += len(confirmed)


async def _remove_log_rows(cutoff: float, *, dry_run: bool) -> tuple[int, int]:
    """(rows removed, rows waiting for their images to be removed first)."""
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


async def run_retention(
    policy: RetentionPolicy, remover: OutputRemover, *, dry_run: bool, trigger: Trigger, now: float | None = None
) -> RetentionReport:
    """Apply `policy` once. The report of a real run is stored (GET shows it as `last_run`)."""
    started = time.monotonic()
    now = time.time() if now is None else now
    images_cutoff, log_cutoff = cutoffs(policy, now)
    tally = _Tally()
    if images_cutoff is not None:
        tally = await _remove_images(images_cutoff, remover, dry_run=dry_run, now=now)
    removed, waiting = (0, 0) if log_cutoff is None else await _remove_log_rows(log_cutoff, dry_run=dry_run)
    report = RetentionReport(
        images_removed=tally.images_removed,
        bytes_freed=tally.bytes_freed,
        log_rows_removed=removed,
        ran_at=now,
        dry_run=dry_run,
        jobs_cleared=tally.jobs_cleared,
        images_missing=tally.images_missing,
        log_rows_waiting=waiting,
        images_cutoff=images_cutoff,
        log_cutoff=log_cutoff,
        trigger=trigger,
        error=tally.error,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
    )
    if not dry_run:
        await _store_report(report)
    return report


class RetentionScheduler:
    """Runs the policy every `run_every_hours` (one replica per due run) and on request."""

    def __init__(self, remover: OutputRemover, log: Any) -> None:
        self._remover = remover
        self._log = log
        self._wake = asyncio.Event()
        self._running = asyncio.Lock()  # one run at a time in this replica

    def wake(self) -> None:
        """Look at the schedule again now (the policy changed)."""
        self._wake.set()

    async def run_now(self, *, dry_run: bool) -> RetentionReport:
        """An on-demand run; raises `unavailable` (with the report in details) when it could not finish."""
        report = await self._run(dry_run=dry_run, trigger="request")
        if report.error is not None:
            raise HubError(ErrorCode.UNAVAILABLE, report.error, details={"report": msgspec.to_builtins(report)})
        return report

    async def _run(self, *, dry_run: bool, trigger: Trigger) -> RetentionReport:
        async with self._running:
            policy = await get_policy()
            report = await run_retention(policy, self._remover, dry_run=dry_run, trigger=trigger)
        fields = msgspec.to_builtins(report)
        if report.error is not None:
            self._log.warning("retention run could not finish", **fields)
        else:
            self._log.info("retention run", **fields)
        return report

    async def run_forever(self) -> None:
        while True:
            try:
                due_in = await seconds_until_due(time.time())
                if due_in <= 0:
                    if await claim_due_run(time.time()):
                        await self._run(dry_run=False, trigger="schedule")
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(due_in, MAX_SLEEP_S))
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("retention schedule failed; trying again in a minute")
                await asyncio.sleep(MAX_SLEEP_S)
