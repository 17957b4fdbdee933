"""A key over its limits meets them at every door that takes a job (issue 15, part 3): REST, MCP generate_image
as a plain call, as a 2025-11-25 task (`params.task`) and as a 2026-07-28 task (the tasks extension). Each refusal
names the limit and when to retry, and leaves no job behind. Real gateway, dispatcher and ComfyUI double."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from gateway_support import GatewayHub, gateway_fixture
from test_gateway_tasks import Legacy, modern

from contracts import endpoints
from contracts.messages.jobs import CancelJob, JobView, ListJobs
from contracts.messages.keys import CreateApiKey, CreatedApiKey, KeyLimits
from contracts.runtime.bus import call

pytestmark = pytest.mark.slow


gw = gateway_fixture("key-limit-doors")


async def jobs_of(gw: GatewayHub, key: CreatedApiKey) -> list[JobView]:
    page = await call(gw.nc, endpoints.Dispatch.JOBS_LIST, ListJobs(api_key_id=key.key.key_id, limit=200))
    return page.jobs


def as_caller(gw: GatewayHub, key: CreatedApiKey) -> Any:
    """What `modern` needs of the hub: the caller's Authorization header."""
    return SimpleNamespace(auth={"Authorization": f"Bearer {key.secret}"})


def generate(prompt: str, **arguments: object) -> dict[str, Any]:
    return {"name": "generate_image", "arguments": {"prompt": prompt, **arguments}}


async def refusals(
    gw: GatewayHub, key: CreatedApiKey, http: httpx.AsyncClient, **arguments: object
) -> tuple[dict[str, str], dict[str, Any]]:
    """The refusal each MCP door gives a job of `key` (the message a caller reads), and the data of the legacy task
    door's JSON-RPC error (what a program reads)."""
    session = await Legacy(http, gw, key.secret).start()
    legacy = await session.call("tools/call", {**generate("one too many", **arguments), "task": {"ttl": 60000}})
    tasked = await modern(http, as_caller(gw, key), "tools/call", generate("one too many", **arguments))
    plain = await modern(http, as_caller(gw, key), "tools/call", generate("one too many", **arguments), tasks=False)
    texts: dict[str, str] = {}
    data: dict[str, Any] = {}
    for door, answer in (("legacy task", legacy), ("modern task", tasked), ("modern plain", plain)):
        if "error" in answer:  # a JSON-RPC error: a task-augmented call has no tool result to carry it
            texts[door], data = answer["error"]["message"], answer["error"]["data"]
        else:
            result = answer["result"]
            assert result.get("isError") is True and "taskId" not in result, (door, answer)
            texts[door] = result["content"][0]["text"]
    return texts, data


async def test_over_the_waiting_limit_every_door_refuses_and_says_when_to_retry(gw: GatewayHub) -> None:
    key: CreatedApiKey = await call(
        gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="one-waiting", limits=KeyLimits(max_waiting=1))
    )
    gw.comfy.work_seconds = 30.0  # the double's two slots stay busy, so the third job waits
    headers = {"Authorization": f"Bearer {key.secret}"}
    try:
        async with (
            httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=30) as api,
            httpx.AsyncClient(base_url=gw.base_url, timeout=60) as http,
        ):
            for number in range(2):  # one at a time: a second submitted while the first still waits is refused
                assert (await api.post("/api/v1/generations", json={"prompt": f"busy {number}"})).status_code == 202
                deadline = time.monotonic() + 30
                while sum(job.status == "running" for job in await jobs_of(gw, key)) <= number:
                    assert time.monotonic() < deadline, await jobs_of(gw, key)
                    await asyncio.sleep(0.1)
            assert (await api.post("/api/v1/generations", json={"prompt": "waits"})).status_code == 202
            rest = await api.post("/api/v1/generations", json={"prompt": "one too many"})
            assert rest.status_code == 429 and int(rest.headers["retry-after"]) >= 1, rest.text
            texts, data = await refusals(gw, key, http)
        assert data["code"] == "limit_exceeded" and data["details"]["retry_after_s"] >= 1, data
        for door, text in texts.items():
            assert "max_waiting 1" in text and "retry in about" in text, (door, text)
        assert sorted(job.prompt for job in await jobs_of(gw, key)) == ["busy 0", "busy 1", "waits"]
    finally:
        gw.comfy.work_seconds = 0.2
        for job in await jobs_of(gw, key):
            await call(gw.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=job.job_id))


async def test_more_images_than_the_key_may_ask_are_refused_at_every_door(gw: GatewayHub) -> None:
    key: CreatedApiKey = await call(
        gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="one-image", limits=KeyLimits(max_images_per_job=1))
    )
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as http:
        texts, data = await refusals(gw, key, http, count=2)
    assert data["details"] == {"limit": "max_images_per_job", "max": 1}, data
    for door, text in texts.items():
        assert "max_images_per_job" in text and "`count` is 2" in text, (door, text)
    assert await jobs_of(gw, key) == []


async def test_concurrent_submissions_never_take_a_key_past_its_waiting_limit(gw: GatewayHub) -> None:
    """Eight submissions of a key limited to two waiting jobs, all at once, while every slot is busy: exactly two are
    accepted, the others get 429, however their checks interleave (the limit is checked again as the job is
    recorded, in one write transaction)."""
    key: CreatedApiKey = await call(
        gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="burst", limits=KeyLimits(max_waiting=2))
    )
    filler: CreatedApiKey = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="filler"))
    gw.comfy.work_seconds = 30.0
    try:
        async with (
            httpx.AsyncClient(
                base_url=gw.base_url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=60
            ) as api,
            httpx.AsyncClient(
                base_url=gw.base_url, headers={"Authorization": f"Bearer {filler.secret}"}, timeout=60
            ) as other,
        ):
            for number in range(2):  # another key takes both slots, so the burst's jobs all wait
                assert (await other.post("/api/v1/generations", json={"prompt": f"fill {number}"})).status_code == 202
            deadline = time.monotonic() + 20
            while sum(job.status == "running" for job in await jobs_of(gw, filler)) < 2:
                assert time.monotonic() < deadline, await jobs_of(gw, filler)
                await asyncio.sleep(0.1)
            answers = await asyncio.gather(
                *(api.post("/api/v1/generations", json={"prompt": f"burst {n}"}) for n in range(8))
            )
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [202, 202] + [429] * 6, [answer.text for answer in answers]
        assert len(await jobs_of(gw, key)) == 2
    finally:
        gw.comfy.work_seconds = 0.2
        for job in [*await jobs_of(gw, key), *await jobs_of(gw, filler)]:
            await call(gw.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=job.job_id))
