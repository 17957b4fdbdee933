"""Limits per API key (max images per job, max jobs waiting) at both doors, REST and MCP, against real hub
processes: a refused submit names the limit, says when to retry, and leaves no job behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import httpx2
import pytest
from gateway_support import GatewayHub, gateway_fixture
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from contracts import endpoints
from contracts.messages.jobs import JobView, ListJobs
from contracts.messages.keys import CreateApiKey, CreatedApiKey, KeyLimits
from contracts.runtime.bus import call

pytestmark = pytest.mark.slow


# A short tool budget: generate_image answers a waiting job after 3 s (its progress said where it stands).
gw = gateway_fixture("key-limits", HUB_GATEWAY_TOOL_BUDGET_S="3")


async def limited_key(gw: GatewayHub, name: str, limits: KeyLimits) -> CreatedApiKey:
    created: CreatedApiKey = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name=name, limits=limits))
    assert created.key.limits == limits
    return created


async def jobs_of(gw: GatewayHub, key: CreatedApiKey) -> list[JobView]:
    page = await call(gw.nc, endpoints.Dispatch.JOBS_LIST, ListJobs(api_key_id=key.key.key_id, limit=200))
    return page.jobs


@contextlib.asynccontextmanager
async def mcp(gw: GatewayHub, key: CreatedApiKey) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key.secret}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http,
        streamable_http_client(f"{gw.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def test_more_images_than_the_key_may_ask_per_job_are_refused_at_both_doors(gw: GatewayHub) -> None:
    key = await limited_key(gw, "two-per-job", KeyLimits(max_images_per_job=2, weight=2))
    async with httpx.AsyncClient(base_url=gw.base_url, headers={"Authorization": f"Bearer {key.secret}"}) as api:
        refused = await api.post("/api/v1/generations", json={"prompt": "three cats", "count": 3})
    # A retry would be refused again, so this is a 400 naming the field and the limit, not a 429.
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["field"] == "count" and error["details"] == {"limit": "max_images_per_job", "max": 2}, error
    async with mcp(gw, key) as session:
        result = await session.call_tool("generate_image", {"prompt": "three cats", "count": 3})
    assert result.is_error and "max_images_per_job" in result.content[0].text, result.content
    assert await jobs_of(gw, key) == []


async def test_a_key_at_its_waiting_limit_gets_429_with_retry_after_and_nothing_is_recorded(gw: GatewayHub) -> None:
    key = await limited_key(gw, "two-waiting", KeyLimits(max_waiting=2))
    gw.comfy.work_seconds = 30.0  # the double's two slots stay busy, so later jobs wait
    try:
        async with httpx.AsyncClient(
            base_url=gw.base_url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=30
        ) as api:
            accepted = [await api.post("/api/v1/generations", json={"prompt": f"dog {i}"}) for i in range(2)]
            await wait_until_running(gw, key, 2)
            accepted += [await api.post("/api/v1/generations", json={"prompt": f"dog {i}"}) for i in (2, 3)]
            assert [r.status_code for r in accepted] == [202] * 4, [r.text for r in accepted]
            refused = await api.post("/api/v1/generations", json={"prompt": "one dog too many"})
            assert refused.status_code == 429, refused.text
            error = refused.json()["error"]
            assert error["code"] == "limit_exceeded" and error["details"]["limit"] == "max_waiting", error
            assert int(refused.headers["retry-after"]) == error["details"]["retry_after_s"] >= 1
            async with mcp(gw, key) as session:
                result = await session.call_tool("generate_image", {"prompt": "one dog too many"})
            assert result.is_error, result.content
            assert "max_waiting" in result.content[0].text and "retry" in result.content[0].text
            jobs = await jobs_of(gw, key)
            assert sorted(job.prompt for job in jobs) == [f"dog {i}" for i in range(4)]
            for response in accepted:
                await api.delete(f"/api/v1/generations/{response.json()['job_id']}")
    finally:
        gw.comfy.work_seconds = 0.2


async def wait_until_running(gw: GatewayHub, key: CreatedApiKey, count: int) -> None:
    deadline = time.monotonic() + 15
    while sum(job.status == "running" for job in await jobs_of(gw, key)) < count:
        assert time.monotonic() < deadline, await jobs_of(gw, key)
        await asyncio.sleep(0.1)


async def test_a_waiting_job_tells_its_place_in_its_keys_queue_and_its_estimated_start(gw: GatewayHub) -> None:
    key = await limited_key(gw, "patient", KeyLimits())
    headers = {"Authorization": f"Bearer {key.secret}"}
    async with (
        httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=30) as api,
        httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as other,
    ):
        first = (await api.post("/api/v1/generations", json={"prompt": "a measured run"})).json()
        deadline = time.monotonic() + 15  # one completed job gives the dispatcher a run time to estimate with
        while not (await api.get(f"/api/v1/generations/{first['job_id']}")).json()["done"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        gw.comfy.work_seconds = 30.0
        submitted: list[str] = []
        try:
            for client, prompt in ((api, "busy 1"), (api, "busy 2")):
                submitted.append((await client.post("/api/v1/generations", json={"prompt": prompt})).json()["job_id"])
            await wait_until_running(gw, key, 2)
            for client, prompt in ((other, "another key's"), (api, "mine 1"), (api, "mine 2")):
                submitted.append((await client.post("/api/v1/generations", json={"prompt": prompt})).json()["job_id"])
            before = time.time()
            view = (await api.get(f"/api/v1/generations/{submitted[-1]}")).json()
            # Third in the whole queue, second of this key's own; two slots are busy, so it starts after the
            # second wave of runs (~2 measured run times of the first job, which took ~0.2 s).
            assert (view["queue_position"], view["key_queue_position"]) == (3, 2), view
            assert before < view["estimated_start_at"] < before + 30, view
            messages: list[str] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                messages.append(message or "")

            async with mcp(gw, key) as session:
                await session.call_tool("generate_image", {"prompt": "mine 3"}, progress_callback=on_progress)
            assert messages and "number 3 of your waiting jobs" in messages[0], messages
            assert "position 4" in messages[0] and "starts in about" in messages[0], messages
        finally:
            gw.comfy.work_seconds = 0.2
            await other.delete(f"/api/v1/generations/{submitted[2]}")
            for job in await jobs_of(gw, key):
                if job.status in ("accepted", "queued", "running"):
                    await api.delete(f"/api/v1/generations/{job.job_id}")


async def test_a_key_at_its_running_limit_waits_although_a_slot_is_free(gw: GatewayHub) -> None:
    await running_limit_holds(gw)


async def running_limit_holds(gw: GatewayHub) -> None:
    """Two jobs of a key limited to one running, on a double with two free slots: they run one after the other."""
    key = await limited_key(gw, "one-at-a-time", KeyLimits(max_running=1))
    gw.comfy.work_seconds = 3.0
    try:
        async with httpx.AsyncClient(
            base_url=gw.base_url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=30
        ) as api:
            ids = [
                (await api.post("/api/v1/generations", json={"prompt": f"cat {i}"})).json()["job_id"] for i in (1, 2)
            ]
            await wait_until_running(gw, key, 1)
            # The double has two slots and only one is taken; the second job still waits for the first.
            for _ in range(10):
                statuses = {job.job_id: job.status for job in await jobs_of(gw, key)}
                assert sum(status == "running" for status in statuses.values()) == 1, statuses
                await asyncio.sleep(0.1)
            assert statuses[ids[1]] == "queued", statuses
            first = await wait_done(api, ids[0])
            second = await wait_done(api, ids[1])
            assert first["status"] == second["status"] == "completed", (first, second)
            # The second started only once the first had finished.
            assert second["timings"]["started_at"] >= first["timings"]["finished_at"], (first, second)
    finally:
        gw.comfy.work_seconds = 0.2


async def wait_done(api: httpx.AsyncClient, job_id: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while not (view := (await api.get(f"/api/v1/generations/{job_id}")).json())["done"]:
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)
    return view
