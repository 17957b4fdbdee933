"""No event is lost and no job is recorded twice: the stats process is killed (kill -9) in the middle of a
stream of events, events keep coming while it is down, and after a restart every job is in the log exactly once
with its final state. Several replicas share the one durable consumer. A database outage delays the log but
loses nothing."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from stats_support import Event, JobScript, StatsHub, publish, stats_hub, wait_recorded, wait_until

from contracts import endpoints
from contracts.messages.events import JobCancelled, JobCompleted, JobFailed, JobStarted
from contracts.messages.health import HealthRequest
from contracts.messages.stats import GetGeneration
from contracts.runtime.bus import call
from contracts.streams import EVENTS_STREAM
from stats_service.consumer import CONSUMER_NAME

BASE = 1_790_000_000.0


def busy_hub_scripts(count: int, seed: int) -> list[JobScript]:
    rng = random.Random(seed)
    scripts = []
    for i in range(count):
        outcome = rng.choice(["completed", "completed", "completed", "failed", "cancelled"])
        scripts.append(
            JobScript(
                f"crash-{i:03d}",
                BASE + i,
                outcome=outcome,
                instance=f"comfy-{i % 3}",
                queue_s=None if outcome == "cancelled" and i % 2 else rng.choice([0.25, 0.5, 1.0, 2.0]),
                run_s=rng.choice([1.5, 3.0, 6.0]),
                outputs=rng.randint(1, 3),
                output_size=rng.randint(100, 5000),
                retry=i % 7 == 0,
                seed=rng.randint(0, 2**63 - 1),
                prompt=f"job {i}: a lighthouse at dusk",
            )
        )
    return scripts


def interleaved(scripts: list[JobScript], seed: int) -> list[Event]:
    """The events of many jobs in flight at once, as on a busy hub; every 5th job's final event comes before its
    start (as after a redelivery), and about 5% of the events are published twice."""
    rng = random.Random(seed)
    queues: list[list[Event]] = []
    for index, script in enumerate(scripts):
        events = script.events()
        if index % 5 == 0:
            final = next(e for e in events if isinstance(e, (JobCompleted, JobFailed, JobCancelled)))
            start = next((i for i, e in enumerate(events) if isinstance(e, JobStarted)), None)
            if start is not None:
                events.remove(final)
                events.insert(start, final)
        queues.append(events)
    sequence: list[Event] = []
    waiting = list(range(len(queues)))
    in_flight: list[int] = []
    while waiting or in_flight:
        while waiting and len(in_flight) < 12:
            in_flight.append(waiting.pop(0))
        job = rng.choice(in_flight)
        sequence.append(queues[job].pop(0))
        if not queues[job]:
            in_flight.remove(job)
    for _ in range(len(sequence) // 20):
        sequence.insert(rng.randint(0, len(sequence)), rng.choice(sequence))
    return sequence


async def check_recorded_once_with_final_state(hub: StatsHub, scripts: list[JobScript]) -> None:
    assert hub.rows("SELECT count(*), count(DISTINCT job_id) FROM generation") == [(len(scripts), len(scripts))]
    for script in scripts:
        record = await call(hub.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id=script.job_id))
        ran = script.started_at is not None
        assert record.status == script.outcome, script.job_id
        assert (record.prompt, record.seed) == (script.prompt, script.seed)
        assert record.instance == (script.instance if ran else None)
        assert record.attempts == ((2 if script.retry else 1) if ran else 0)
        assert [o.output_id for o in record.outputs] == [o.output_id for o in script.output_files()]
        assert record.bytes_out == sum(o.size for o in script.output_files())
        assert (record.accepted_at, record.started_at, record.finished_at) == (
            script.accepted_at,
            script.started_at,
            script.finished_at,
        )
        assert record.queue_wait_ms == (script.queue_s * 1000 if script.queue_s is not None else None)
        assert record.run_ms == (script.run_s * 1000 if ran else None)
        assert (record.error is None) == (script.outcome == "completed")


async def rows_recorded(hub: StatsHub) -> bool:
    return hub.rows("SELECT count(*) FROM generation")[0][0] > 0


async def consumer_settled(hub: StatsHub) -> bool:
    info = await hub.js.consumer_info(EVENTS_STREAM, CONSUMER_NAME)
    return info.num_pending == 0 and info.num_ack_pending == 0


@pytest.mark.slow
async def test_a_kill_9_in_the_middle_of_a_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async with stats_hub(tmp_path) as hub:
        first = await hub.start_stats()
        scripts = busy_hub_scripts(80, seed=11)
        sequence = interleaved(scripts, seed=12)
        assert len(sequence) > 500  # "a few hundred events", progress and duplicates included
        kill_at = len(sequence) // 3
        recorded_before_kill = 0
        for position, event in enumerate(sequence):
            await publish(hub.js, event)
            if position == kill_at:
                await wait_until(lambda: rows_recorded(hub), what="the first rows to be recorded")
                first.kill()  # SIGKILL: no clean-up, batches in flight are neither committed nor acknowledged
                assert first.process is not None and first.process.returncode == -9
                recorded_before_kill = hub.rows("SELECT count(*) FROM generation")[0][0]
            await asyncio.sleep(0.002)
        assert 0 < recorded_before_kill < len(scripts)  # killed while it was recording

        await hub.start_stats()  # same database, same durable consumer
        await wait_recorded(hub, scripts, timeout_s=60)
        await wait_until(lambda: consumer_settled(hub), what="every event to be acknowledged")
        await check_recorded_once_with_final_state(hub, scripts)


@pytest.mark.slow
async def test_replicas_share_the_consumer_and_record_each_job_once(tmp_path: Path) -> None:
    async with stats_hub(tmp_path) as hub:
        replicas = [await hub.start_stats(HUB_LOG_LEVEL="debug") for _ in range(2)]
        scripts = busy_hub_scripts(100, seed=21)
        for event in interleaved(scripts, seed=22):
            await publish(hub.js, event)
            await asyncio.sleep(0.001)
        await wait_recorded(hub, scripts, timeout_s=60)
        await wait_until(lambda: consumer_settled(hub), what="every event to be acknowledged")
        await check_recorded_once_with_final_state(hub, scripts)
        batches = [replica.log().count('"events recorded"') for replica in replicas]
        assert all(count > 0 for count in batches), f"each replica should have recorded events: {batches}"


@pytest.mark.slow
async def test_a_database_outage_loses_no_event_and_shows_in_health(tmp_path: Path) -> None:
    async with stats_hub(tmp_path) as hub:
        stats = await hub.start_stats()
        # Another writer holds the database's write lock longer than the service's busy timeout (5 s).
        blocker = sqlite3.connect(hub.database, timeout=1, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        scripts = busy_hub_scripts(20, seed=31)
        try:
            for event in interleaved(scripts, seed=32):
                await publish(hub.js, event)

            async def failing() -> bool:
                return "recording events failed" in stats.log()

            await wait_until(failing, timeout_s=30, what="the batch to fail on the locked database")

            async def unhealthy() -> bool:
                health = await call(hub.nc, endpoints.health("stats"), HealthRequest())
                events = next(c for c in health.checks if c.name == "events")
                return not health.ok and not events.ok and "database is locked" in events.detail

            await wait_until(unhealthy, timeout_s=30, what="the health check to report the outage")
            assert hub.rows("SELECT count(*) FROM generation") == [(0,)]  # nothing half-written
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_recorded(hub, scripts, timeout_s=60)  # the failed batches come again and are recorded
        await wait_until(lambda: consumer_settled(hub), what="every event to be acknowledged")
        await check_recorded_once_with_final_state(hub, scripts)
        health = await call(hub.nc, endpoints.health("stats"), HealthRequest())
        assert health.ok
