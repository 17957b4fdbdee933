"""Retention over real NATS: the stats service asks a stand-in for the dispatcher (a real NATS subscriber on
`Dispatch.OUTPUTS_DELETE`) to delete exactly the output files the policy says, marks their jobs, removes old log
rows, and marks nothing when the dispatcher does not answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stats_support import DispatcherStandIn, JobScript, StatsHub, stats_hub, wait_recorded, wait_until

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.stats import (
    GetGeneration,
    GetRetention,
    RetentionPolicy,
    RetentionReport,
    RunRetention,
    SaveRetention,
)
from contracts.runtime.bus import call

DAY = 86400.0


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[StatsHub]:
    async with stats_hub(tmp_path) as hub:
        await hub.start_stats()
        yield hub


def aged(name: str, days: float, **kw: object) -> JobScript:
    return JobScript(name, time.time() - days * DAY, **kw)  # type: ignore[arg-type]


async def record(hub: StatsHub, scripts: list[JobScript]) -> None:
    await hub.publish_all([e for s in scripts for e in s.events()])
    await wait_recorded(hub, scripts)


async def save(hub: StatsHub, **policy: object) -> RetentionPolicy:
    return await call(hub.nc, endpoints.Stats.RETENTION_SAVE, SaveRetention(policy=RetentionPolicy(**policy)))  # type: ignore[arg-type]


async def run(hub: StatsHub, *, dry_run: bool = False) -> RetentionReport:
    return await call(hub.nc, endpoints.Stats.RETENTION_RUN, RunRetention(dry_run=dry_run))


def state(hub: StatsHub) -> dict[str, bool]:
    """job id -> images_removed, for every row in the stats database."""
    return {job: bool(removed) for job, removed in hub.rows("SELECT job_id, images_removed FROM generation")}


def output_ids(*scripts: JobScript) -> set[str]:
    return {o.output_id for s in scripts for o in s.output_files()}


async def test_a_run_removes_exactly_what_the_policy_says(hub: StatsHub) -> None:
    very_old = aged("a-100d", 100, outputs=2, output_size=1000)  # images and row go
    old = aged("b-40d", 40, outputs=1, output_size=300)  # images go, the row stays
    old_failed = aged("c-40d-failed", 40, outcome="failed")  # nothing to remove
    recent = aged("d-10d", 10, outputs=1)
    very_old_failed = aged("e-95d-failed", 95, outcome="failed")  # the row goes
    month = aged("f-31d", 31, outputs=3, output_size=50)  # images go
    young = aged("g-29d", 29, outputs=1)
    everything = [very_old, old, old_failed, recent, very_old_failed, month, young]
    await record(hub, everything)
    dispatcher = await DispatcherStandIn(hub.nc, stored=output_ids(*everything)).start()
    saved = await save(hub, keep_images_days=30, keep_log_days=90, run_every_hours=168)
    assert (saved.keep_images_days, saved.keep_log_days, saved.run_every_hours) == (30, 90, 168)

    preview = await run(hub, dry_run=True)
    assert (preview.dry_run, preview.images_removed, preview.bytes_freed) == (True, 6, 2000 + 300 + 150)
    assert (preview.jobs_cleared, preview.log_rows_removed) == (3, 2)
    assert dispatcher.requests == []  # a dry run deletes nothing
    assert not any(state(hub).values()) and len(state(hub)) == 7

    report = await run(hub)
    assert sorted(dispatcher.asked) == sorted(output_ids(very_old, old, month))  # exactly these, each once
    assert (report.images_removed, report.images_missing, report.bytes_freed) == (6, 0, 2450)
    assert (report.jobs_cleared, report.log_rows_removed, report.log_rows_waiting) == (3, 2, 0)
    assert report.error is None and report.trigger == "request" and not report.dry_run
    assert report.images_cutoff == pytest.approx(report.ran_at - 30 * DAY)
    assert report.log_cutoff == pytest.approx(report.ran_at - 90 * DAY)
    assert state(hub) == {"b-40d": True, "c-40d-failed": False, "d-10d": False, "f-31d": True, "g-29d": False}
    assert dispatcher.stored == output_ids(recent, young)

    # The row of a job whose images were removed keeps its metadata until the log policy removes it.
    kept = await call(hub.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id="b-40d"))
    assert kept.images_removed and kept.images_removed_at == pytest.approx(report.ran_at)
    assert kept.prompt == old.prompt and [o.output_id for o in kept.outputs] == ["b-40d-out-0"]

    policy = await call(hub.nc, endpoints.Stats.RETENTION_GET, GetRetention())
    assert policy.last_run == report
    assert policy.next_run_at == pytest.approx(report.ran_at + 168 * 3600)

    again = await run(hub)
    assert (again.images_removed, again.log_rows_removed, again.jobs_cleared) == (0, 0, 0)
    assert len(dispatcher.requests) == 1  # nothing more was asked


async def test_without_a_dispatcher_nothing_is_marked_removed_and_the_next_run_finishes(hub: StatsHub) -> None:
    old = aged("old-40d", 40, outputs=2)
    very_old = aged("old-100d", 100, outputs=1)
    very_old_failed = aged("old-100d-failed", 100, outcome="failed")
    await record(hub, [old, very_old, very_old_failed])
    await save(hub, keep_images_days=30, keep_log_days=90, run_every_hours=168)

    with pytest.raises(HubError) as raised:  # nobody answers Dispatch.OUTPUTS_DELETE
        await run(hub)
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert "dispatch" in raised.value.info.message and "next run" in raised.value.info.message
    report = RetentionReport(**raised.value.info.details["report"])  # type: ignore[arg-type,index]
    assert (report.images_removed, report.jobs_cleared) == (0, 0)
    # The row without images may go; the one whose images are still stored waits for them.
    assert (report.log_rows_removed, report.log_rows_waiting) == (1, 1)
    assert state(hub) == {"old-40d": False, "old-100d": False}
    policy = await call(hub.nc, endpoints.Stats.RETENTION_GET, GetRetention())
    assert policy.last_run is not None and policy.last_run.error == report.error
    assert policy.next_run_at == pytest.approx(report.ran_at + 15 * 60)  # tried again soon, not in a week

    # The dispatcher is back; one of the files was already gone: it counts as removed, not as a failure.
    stored = output_ids(old, very_old) - {"old-40d-out-1"}
    dispatcher = await DispatcherStandIn(hub.nc, stored=stored).start()
    report = await run(hub)
    assert sorted(dispatcher.asked) == sorted(output_ids(old, very_old))
    assert (report.images_removed, report.images_missing, report.jobs_cleared) == (2, 1, 2)
    assert (report.log_rows_removed, report.log_rows_waiting, report.error) == (1, 0, None)
    assert state(hub) == {"old-40d": True}


async def test_the_schedule_runs_the_policy_by_itself(hub: StatsHub) -> None:
    old = aged("sched-40d", 40, outputs=1)
    await record(hub, [old])
    dispatcher = await DispatcherStandIn(hub.nc, stored=output_ids(old)).start()
    await save(hub, keep_images_days=30, keep_log_days=365, run_every_hours=0.0005)  # every 1.8 s

    runs: list[RetentionReport] = []

    async def ran_after(instant: float) -> bool:
        policy = await call(hub.nc, endpoints.Stats.RETENTION_GET, GetRetention())
        last = policy.last_run
        if last is not None and last.trigger == "schedule" and last.ran_at > instant:
            runs.append(last)
            return True
        return False

    await wait_until(lambda: ran_after(0), timeout_s=20, what="a scheduled retention run")
    assert runs[0].images_removed == 1 and runs[0].jobs_cleared == 1
    assert dispatcher.asked == ["sched-40d-out-0"]
    assert state(hub) == {"sched-40d": True}
    # The next scheduled run finds nothing more to do and asks the dispatcher nothing.
    await wait_until(lambda: ran_after(runs[0].ran_at), timeout_s=20, what="a second scheduled run")
    assert runs[1].ran_at - runs[0].ran_at == pytest.approx(1.8, abs=1.5)
    assert runs[1].images_removed == 0 and len(dispatcher.requests) == 1


async def test_a_policy_that_would_lose_track_of_images_is_refused(hub: StatsHub) -> None:
    before = await call(hub.nc, endpoints.Stats.RETENTION_GET, GetRetention())
    assert (before.keep_images_days, before.keep_log_days, before.run_every_hours) == (30, 365, 6.0)
    for policy in ({"keep_images_days": 30, "keep_log_days": 10}, {"keep_images_days": 0, "keep_log_days": 365}):
        with pytest.raises(HubError) as raised:
            await save(hub, **policy)
        assert raised.value.code is ErrorCode.INVALID_REQUEST
        assert raised.value.info.field == "policy.keep_log_days"
        assert "keep_log_days" in raised.value.info.message
    never = SaveRetention(policy=RetentionPolicy(run_every_hours=0))
    with pytest.raises(HubError) as raised:
        await call(hub.nc, endpoints.Stats.RETENTION_SAVE, never)
    assert raised.value.info.field == "policy.run_every_hours"
    after = await call(hub.nc, endpoints.Stats.RETENTION_GET, GetRetention())
    assert (after.keep_images_days, after.keep_log_days) == (30, 365)

    # Keeping everything forever is a valid policy: a run removes nothing and asks the dispatcher nothing.
    await record(hub, [aged("ancient", 1000, outputs=1)])
    dispatcher = await DispatcherStandIn(hub.nc, stored={"ancient-out-0"}).start()
    await save(hub, keep_images_days=0, keep_log_days=0)
    report = await run(hub)
    assert (report.images_removed, report.log_rows_removed, report.images_cutoff, report.log_cutoff) == (
        0,
        0,
        None,
        None,
    )
    assert dispatcher.requests == [] and state(hub) == {"ancient": False}
