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
from contracts.messages.base import struct_from
from contracts.messages.jobs import DeletedOutputs, OutputFile
from contracts.messages.stats import RetentionPolicy, RetentionReport
from stats_service import store

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


# -- the policy ----------------------------------------------------------------------------------------------


def _next_run_at(stored: store.PolicyRecord) -> float:
    if stored.last_run_at is None:
        return time.time()
    interval = stored.run_every_hours * 3600
    last = stored.last_report
    if last is not None and last.error is not None:
        interval = min(interval, RETRY_AFTER_FAILURE_S)
    return float(stored.last_run_at) + interval


def _policy_of(stored: store.PolicyRecord) -> RetentionPolicy:
    return struct_from(RetentionPolicy, stored, last_run=stored.last_report, next_run_at=_next_run_at(stored))


async def get_policy() -> RetentionPolicy:
    return _policy_of(await store.policy())


async def save_policy(policy: RetentionPolicy) -> RetentionPolicy:
    check_policy(policy)
    await store.save_policy(policy)
    return await get_policy()


async def claim_due_run(now: float) -> bool:
    """Take the scheduled run if it is due and no replica took it yet (the claim is the new last_run_at)."""
    return await store.claim_run(now, lambda stored: now >= _next_run_at(stored))


async def seconds_until_due(now: float) -> float:
    return _next_run_at(await store.policy()) - now


# -- the run ------------------------------------------------------------------------------------------------


class _Tally(msgspec.Struct, kw_only=True):
    images_removed: int = 0
    images_missing: int = 0
    bytes_freed: int = 0
    jobs_cleared: int = 0
    error: str | None = None


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
        page = await store.image_rows(cutoff, after_id, SCAN_PAGE)
        if not page:
            return tally
        after_id = page[-1].id
        rows = [(row.job_id, row.outputs) for row in page]
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
                await store.mark_images_removed(confirmed, now)
                tally.jobs_cleared += len(confirmed)


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
    removed, waiting = (0, 0) if log_cutoff is None else await store.remove_log_rows(log_cutoff, dry_run=dry_run)
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
        await store.save_report(report)
    return report


class RetentionScheduler:
    """Runs the policy every `run_every_hours` (one replica per due run) and on request."""

    def __init__(
        self, remover: OutputRemover, log: Any, on_report: Callable[[RetentionReport], None] | None = None
    ) -> None:
        self._remover = remover
        self._on_report = on_report
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
        if self._on_report is not None:
            self._on_report(report)
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
