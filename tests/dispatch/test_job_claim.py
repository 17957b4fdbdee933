"""The claim of a job (store.claim, on a real SQLite database): which delivery of its stream message may take it.

A replica that stalled between its fetch and its claim may see its job handed back (the restarted replica's look for
fetched jobs no lease names, cf34aea), delivered again and claimed by another replica: its own, earlier delivery
must not claim the job then, or the job runs twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from piccolo.engine.sqlite import SQLiteEngine

from dispatch_service.store import JobStore
from dispatch_service.tables import JobRow

SEQ = 7  # the job's stream message


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    """A job table of its own (the test process shares JobRow with no service) holding one waiting job."""
    previous = JobRow._meta._db
    JobRow._meta.db = SQLiteEngine(path=str(tmp_path / "dispatch.sqlite3"))
    try:
        await JobRow.create_table().run()
        await JobRow.insert(JobRow(job_id="job-1", status="queued", render_type="txt2img", accepted_at=1.0)).run()
        yield JobStore()
    finally:
        JobRow._meta._db = previous


async def claimed_by(store: JobStore) -> tuple[str | None, int]:
    row = await store.require("job-1")
    return row.instance, row.delivery


async def test_a_running_job_is_taken_over_only_by_a_later_delivery_of_its_message(store: JobStore) -> None:
    assert await store.claim("job-1", SEQ, 1, status="running", instance="a")
    assert await claimed_by(store) == ("a", 1)
    # Replica a stalled past the hand-back; the message's second delivery went to replica b.
    assert await store.claim("job-1", SEQ, 2, status="running", instance="b")
    assert await claimed_by(store) == ("b", 2)
    # a resumes with its first delivery: refused (before: taken, and the job ran on both).
    assert not await store.claim("job-1", SEQ, 1, status="running", instance="a")
    assert not await store.claim("job-1", SEQ, 2, status="running", instance="a")  # the same delivery again
    assert not await store.claim("job-1", SEQ + 1, 3, status="running", instance="a")  # another message of the job
    assert await claimed_by(store) == ("b", 2)
    # b died: its successor follows b's attempt from b's own delivery (the lease's reply subject).
    assert await store.claim("job-1", SEQ, 2, adopting=True, status="running", instance="c")
    assert not await store.claim("job-1", SEQ, 1, adopting=True, status="running", instance="a")
    # The take-over time passed with nobody on it: the next delivery takes it.
    assert await store.claim("job-1", SEQ, 3, status="running", instance="d")
    assert await claimed_by(store) == ("d", 3)


async def test_a_running_job_claimed_before_the_delivery_was_recorded_is_taken_over_by_any_delivery(
    store: JobStore,
) -> None:
    await JobRow.update({JobRow.status: "running", JobRow.stream_seq: SEQ, JobRow.instance: "old"}).where(
        JobRow.job_id == "job-1"
    )
    assert await claimed_by(store) == ("old", 0)  # a row of a running job migrated from before: delivery 0
    assert await store.claim("job-1", SEQ, 1, status="running", instance="a")
    assert await claimed_by(store) == ("a", 1)
