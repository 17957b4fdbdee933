"""What the hub leaves in NATS, on a real nats-server with the real services: every stream and bucket it creates
has its limits set, a job's events take one subject (nats-server keeps each subject in memory), many requests
leave no consumer behind, and a full job queue refuses a job clearly instead of dropping one."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from dispatch_support import submit, wait_final, wait_for
from gateway_support import GatewayHub, gateway_fixture
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamInfo

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import QueueViewRequest
from contracts.runtime.bus import call
from contracts.streams import (
    EVENTS,
    EVENTS_STREAM,
    JOBS,
    JOBS_STREAM,
    PREVIEWS_BUCKET,
    PREVIEWS_KEPT_S,
    PREVIEWS_MAX_BYTES,
    StreamSpec,
    event_subject,
)
from dispatch_service.fair_share import KEY_CONSUMER_PREFIX, key_token

pytestmark = pytest.mark.slow


gw = gateway_fixture("nats-limits", also=("stats",))


def assert_limits(info: StreamInfo, spec: StreamSpec) -> None:
    config = info.config
    assert config.retention == RetentionPolicy(spec.retention)
    assert (config.max_age or 0) == pytest.approx(spec.max_age_s)
    assert (config.max_msgs, config.max_bytes) == (spec.max_msgs, spec.max_bytes)
    assert config.max_msgs > 0 and config.max_bytes > 0  # bounded, whatever the spec says
    assert config.discard == DiscardPolicy(spec.discard)
    assert config.duplicate_window == pytest.approx(spec.duplicate_window_s)


async def consumers(gw: GatewayHub) -> dict[str, list[str]]:
    js = gw.nc.jetstream()
    streams = await js.streams_info()
    return {s.config.name: sorted(c.name for c in await js.consumers_info(s.config.name)) for s in streams}


async def event_subjects(gw: GatewayHub) -> set[str]:
    info = await gw.nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter=">")
    return set(info.state.subjects or {})


async def test_every_stream_and_bucket_the_hub_creates_is_bounded(gw: GatewayHub) -> None:
    js = gw.nc.jetstream()
    assert_limits(await js.stream_info(EVENTS_STREAM), EVENTS)
    assert_limits(await js.stream_info(JOBS_STREAM), JOBS)
    # The previews' renditions are large values: bounded by age and by bytes as well as by their keys.
    previews = (await js.stream_info(f"KV_{PREVIEWS_BUCKET}")).config
    assert (previews.max_bytes, previews.max_age) == (PREVIEWS_MAX_BYTES, pytest.approx(PREVIEWS_KEPT_S))
    for info in await js.streams_info():
        name = info.config.name
        if name.startswith("KV_"):  # a bucket keeps one value per key, so it is bounded by its keys
            assert info.config.max_msgs_per_subject == 1, name
        elif name.startswith("OBJ_"):  # the outputs: bounded by retention (stats-service), see README
            assert name == "OBJ_hub-outputs"
        else:
            assert name in (EVENTS_STREAM, JOBS_STREAM), f"a stream without a spec in contracts.streams: {name}"


async def test_many_requests_leave_no_consumer_and_one_subject_per_job(gw: GatewayHub) -> None:
    js = gw.nc.jetstream()
    before = await consumers(gw)
    subjects_before = await event_subjects(gw)
    job_ids = []
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:

        async def one(i: int) -> None:
            submitted = await api.post("/api/v1/generations", json={"prompt": f"bounded {i}", "steps": 2})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            job_ids.append(job_id)
            async with api.stream("GET", f"/api/v1/generations/{job_id}/events") as events:  # a follower each
                async for line in events.aiter_lines():
                    if line.strip() in ("event: completed", "event: failed"):
                        break
            view = (await api.get(f"/api/v1/generations/{job_id}")).json()  # and a view each
            assert view["status"] == "completed", view

        for start in range(0, 40, 8):
            await asyncio.gather(*(one(i) for i in range(start, start + 8)))
    # Nothing per request: the durable ones and the buckets' watchers only, and the job consumer of the caller's key
    # (one per API key, for fair share between keys). Only consumers added count: the session's NATS also holds the
    # watchers of earlier modules' stopped services, which the server may remove meanwhile.
    key_consumer = KEY_CONSUMER_PREFIX + key_token(gw.key.key.key_id)
    after = await consumers(gw)
    assert key_consumer in after[JOBS_STREAM], after
    added_consumers = {stream: set(names) - {*before.get(stream, []), key_consumer} for stream, names in after.items()}
    assert not any(added_consumers.values()), added_consumers
    added = (await event_subjects(gw)) - subjects_before
    assert added == {event_subject(job_id) for job_id in job_ids} and len(added) == 40
    for job_id in job_ids[:3]:
        stored = await js.get_msg(EVENTS_STREAM, subject=event_subject(job_id), seq=1, next=True)
        assert stored.subject == event_subject(job_id)


async def test_a_full_job_queue_refuses_a_job_and_fails_it_instead_of_dropping_one(gw: GatewayHub) -> None:
    js = gw.nc.jetstream()
    config = (await js.stream_info(JOBS_STREAM)).config
    gw.comfy.work_seconds = 3.0  # the two slots stay busy, so further jobs wait on the stream
    try:
        running = [await submit(gw.nc, f"busy {i}") for i in range(2)]
        for reply in running:
            await wait_for(gw.nc, reply.job_id, {"running"})
        waiting = (await js.stream_info(JOBS_STREAM)).state.messages
        config.max_msgs = waiting + 1  # room for one more waiting job
        await js.update_stream(config)
        queued = await submit(gw.nc, "the last one with room")
        started = time.monotonic()
        with pytest.raises(HubError) as refused:
            await submit(gw.nc, "one too many")
        assert time.monotonic() - started < 5
        error = refused.value.info
        assert error.code is ErrorCode.UNAVAILABLE and "job queue is full" in error.message, error
        # The refused job is not left half-made: it is recorded as failed, with the same reason.
        recent = await call(gw.nc, endpoints.Dispatch.QUEUE_VIEW, QueueViewRequest(include_finished=True))
        (refused_job,) = [j for j in recent.jobs if j.prompt == "one too many"]
        assert refused_job.status == "failed" and refused_job.error == error.message
        for reply in [*running, queued]:
            assert (await wait_final(gw.nc, reply.job_id)).status == "completed"
    finally:
        gw.comfy.work_seconds = 0.2
        config.max_msgs = JOBS.max_msgs
        await js.update_stream(config)
