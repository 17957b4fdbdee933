"""The job store on its own (SQLite): a row inserted here is kept for its job's first fetch, the same as the row read
back, and only while no write other than a status change here has touched it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from contracts.messages.jobs import GenerationRequest
from contracts.messages.render_types import GenerationParams, ModelRef, Requirements, ResolvedWorkflow
from contracts.messages.styles import BuiltPrompt
from contracts.runtime.database import SharedConnectionSQLiteEngine, close
from dispatch_service.jobs import PreparedJob
from dispatch_service.store import FRESH_KEPT, JobStore, WaitingLimitError
from dispatch_service.tables import JobRow


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    engine = SharedConnectionSQLiteEngine(path=str(tmp_path / "dispatch.sqlite"))
    before = JobRow._meta.db
    JobRow._meta.db = engine
    try:
        await JobRow.create_table().run()
        yield JobStore()
    finally:
        JobRow._meta.db = before
        await close(engine)


def _prepared(job_id: str, api_key_id: str | None = "key-1") -> PreparedJob:
    return PreparedJob(
        job_id=job_id,
        request=GenerationRequest(prompt="a lighthouse", styles=["film"], api_key_id=api_key_id, max_running=2),
        resolved=ResolvedWorkflow(
            render_type="sdxl",
            version=3,
            workflow={"3": {"class_type": "KSampler", "inputs": {"seed": 7, "cfg": 6.5, "steps": 20}}},
            params=GenerationParams(prompt="a lighthouse, film", seed=2**62 + 1, width=512, height=768),
            requirements=Requirements(node_classes=["KSampler"], models=[ModelRef(folder="checkpoints", name="x")]),
            output_kind="image",
        ),
        built=BuiltPrompt(positive="a lighthouse, film", negative="blurry", styles_applied=["film"], enhanced=False),
        input_image_id=None,
        accepted_at=time.time(),
    )


async def test_the_row_kept_at_insert_is_the_row_read_back(store: JobStore) -> None:
    await store.insert(_prepared("job-a"))
    read = await store.get("job-a")
    kept = store.take_fresh("job-a")
    assert read is not None and kept is not None
    assert msgspec.to_builtins(kept) == msgspec.to_builtins(read)
    assert store.take_fresh("job-a") is None  # once


async def test_a_status_change_here_is_kept_any_other_write_drops_the_row(store: JobStore) -> None:
    for job_id in ("queued", "cancelled", "set", "claimed", "not-changed"):
        await store.insert(_prepared(job_id))
    assert await store.transition("queued", ("accepted",), status="queued")
    kept = store.take_fresh("queued")
    assert kept is not None and kept.status == "queued"
    assert await store.transition("cancelled", ("accepted",), status="cancelled", error="by the caller")
    await store.set("set", error="x")
    assert await store.claim("claimed", 1, 1, status="running")
    assert not await store.transition("not-changed", ("running",), status="queued")
    assert [store.take_fresh(job_id) for job_id in ("cancelled", "set", "claimed", "not-changed")] == [None] * 4


async def test_a_stale_kept_row_never_claims_a_job_another_replica_cancelled(store: JobStore) -> None:
    await store.insert(_prepared("job-b"))
    other_replica = JobStore()  # the same table, its own memory
    assert await other_replica.transition("job-b", ("accepted", "queued"), status="cancelled")
    kept = store.take_fresh("job-b")
    assert kept is not None and kept.status == "accepted"  # stale: written elsewhere
    assert not await store.claim("job-b", 1, 1, status="running")  # the claim reads the row: not run
    read = await store.get("job-b")
    assert read is not None and read.status == "cancelled"


async def test_only_the_newest_rows_are_kept(store: JobStore) -> None:
    for index in range(FRESH_KEPT + 2):
        await store.insert(_prepared(f"job-{index}", api_key_id=None))
    assert store.take_fresh("job-0") is None and store.take_fresh("job-1") is None
    assert store.take_fresh("job-2") is not None and store.take_fresh(f"job-{FRESH_KEPT + 1}") is not None


async def test_an_insert_under_a_waiting_limit_runs_in_its_transaction(store: JobStore) -> None:
    """Inside a transaction the statements go through piccolo's transaction connection (run_raw's other path)."""
    await store.insert(_prepared("first"), max_waiting=1)
    with pytest.raises(WaitingLimitError):
        await store.insert(_prepared("second"), max_waiting=1)
    assert await store.get("second") is None and store.take_fresh("second") is None
    kept = store.take_fresh("first")
    assert kept is not None and kept.id == (await store.require("first")).id
