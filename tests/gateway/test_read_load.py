"""Serving outputs and job events under read load: no NATS consumer per request.

nats-server refuses consumers past a limit (10026 "maximum consumers limit reached"); a gateway that opened one per
image GET or per SSE follower sent truncated images and broken streams once many requests came. Here the streams'
consumer limit is set low, and far more requests than that must still get every byte and every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from dispatch_support import events_of
from gateway_support import GatewayHub, hub_on_own_nats, sse_events
from nats.js import JetStreamContext

from contracts.runtime.storage import CHUNK_SIZE, OUTPUTS_STREAM, ObjectStoreOutputs
from contracts.streams import EVENTS_STREAM

pytestmark = pytest.mark.slow

CONSUMER_LIMIT = 8
SIZES = [1, 1000, 300_000, CHUNK_SIZE, CHUNK_SIZE + 1, 700_001]  # up to one chunk (CHUNK_SIZE) and just over it


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHub]:
    async with hub_on_own_nats(tmp_path_factory.mktemp("read-load")) as (running, _):
        yield running


@contextlib.asynccontextmanager
async def consumer_limit(js: JetStreamContext, stream: str, extra: int) -> AsyncIterator[None]:
    """The stream accepts only `extra` consumers more than it has now, while the block runs."""
    info = await js.stream_info(stream)
    config = info.config
    config.max_consumers = info.state.consumer_count + extra
    await js.update_stream(config)
    try:
        yield
    finally:
        config.max_consumers = -1
        await js.update_stream(config)


async def test_image_gets_far_past_the_consumer_limit_get_every_byte(gw: GatewayHub) -> None:
    outputs = ObjectStoreOutputs(gw.nc.jetstream())
    stored: dict[str, bytes] = {}
    for i in range(24):
        data = os.urandom(SIZES[i % len(SIZES)])
        saved = await outputs.save(io.BytesIO(data), filename=f"o{i}.png", content_type="image/png", job_id="t")
        stored[saved.output_id] = data
    js = gw.nc.jetstream()
    limits = httpx.Limits(max_connections=64)
    async with consumer_limit(js, OUTPUTS_STREAM, CONSUMER_LIMIT), httpx.AsyncClient(limits=limits) as http:
        for _ in range(3):  # sequential: 72 GETs, nine times the limit
            for output_id, data in stored.items():
                response = await http.get(f"{gw.base_url}/images/{output_id}")
                assert response.status_code == 200 and response.content == data, output_id

        async def fetch(output_id: str) -> bool:
            response = await http.get(f"{gw.base_url}/images/{output_id}")
            return response.status_code == 200 and response.content == stored[output_id]

        ids = list(stored) * 8
        assert all(await asyncio.gather(*(fetch(output_id) for output_id in ids)))  # 192 GETs, 64 at a time

        big = next(output_id for output_id, data in stored.items() if len(data) == 700_001)
        part = await http.get(f"{gw.base_url}/images/{big}", headers={"Range": "bytes=131000-400000"})
        assert part.status_code == 206 and part.content == stored[big][131000:400001]
        assert (await js.stream_info(OUTPUTS_STREAM)).state.consumer_count == 0

    await outputs.delete(big)
    gone = await httpx.AsyncClient().get(f"{gw.base_url}/images/{big}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


async def test_sse_followers_far_past_the_consumer_limit_get_every_event(gw: GatewayHub) -> None:
    js = gw.nc.jetstream()
    gw.comfy.work_seconds = 1.0
    limits = httpx.Limits(max_connections=None)
    try:
        async with (
            consumer_limit(js, EVENTS_STREAM, CONSUMER_LIMIT),
            httpx.AsyncClient(limits=limits, timeout=60) as http,
        ):
            jobs = []
            for i in range(2):
                submitted = await http.post(
                    f"{gw.base_url}/api/v1/generations", json={"prompt": f"fox {i}", "steps": 8}, headers=gw.auth
                )
                assert submitted.status_code == 202, submitted.text
                jobs.append(submitted.json()["job_id"])
            # 60 followers while the jobs run, then 20 that join after the end (replay only).
            running = await asyncio.gather(*(sse_events(http, gw, jobs[i % 2]) for i in range(60)))
            late = await asyncio.gather(*(sse_events(http, gw, jobs[i % 2]) for i in range(20)))
            assert (await js.stream_info(EVENTS_STREAM)).state.consumer_count <= CONSUMER_LIMIT
    finally:
        gw.comfy.work_seconds = 0.2
    for i, job_id in enumerate(jobs):
        stored = [(type(e).__struct_config__.tag, e.event_id) for e in await events_of(gw.nc, job_id)]
        assert stored[0][0] == "accepted" and stored[-1][0] == "completed" and len(stored) > 3, stored
        for seen in running[i::2] + late[i::2]:
            assert seen == stored
