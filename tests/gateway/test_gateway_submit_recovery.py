"""A submission whose dispatcher dies before it answers: the gateway asks again under the same job id, so the
caller gets its job from the replica that takes over (before: the POST waited out the 30 s submit timeout, then
503, and the caller could not know whether a job had been made)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from gateway_support import hub_on_own_nats

pytestmark = pytest.mark.slow


async def test_a_post_whose_dispatcher_dies_is_answered_by_the_one_that_takes_over(tmp_path: Path) -> None:
    # The client gives up before the gateway's old submit timeout (3 x 10 s): only a gateway that asks again
    # answers in time.
    async with hub_on_own_nats(tmp_path) as (gw, _), httpx.AsyncClient(timeout=25) as http:
        first = gw.hub.processes["dispatch"]
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGSTOP)  # takes the submission and never answers it
        try:
            post = asyncio.ensure_future(
                http.post(f"{gw.base_url}/api/v1/generations", json={"prompt": "asked twice"}, headers=gw.auth)
            )
            await asyncio.sleep(1.0)
            assert not post.done()
            second = gw.hub.start("dispatch")
            await second.wait_healthy(gw.nc)
        finally:
            first.kill()  # the one holding the submission dies with it
        answer = await post
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        deadline = time.monotonic() + 30
        while (view := (await http.get(f"{gw.base_url}/api/v1/generations/{job_id}", headers=gw.auth)).json())[
            "status"
        ] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.2)
        assert view["status"] == "completed", view
        # One job, run once: the repeats did not make a second one.
        assert [p for p in gw.comfy.executed_prompt_ids if p.startswith(job_id)] == [f"{job_id}-1"]
        assert len(gw.comfy.executed_prompt_ids) == 1, gw.comfy.executed_prompt_ids


async def test_a_post_is_refused_at_once_when_no_dispatcher_runs(tmp_path: Path) -> None:
    async with hub_on_own_nats(tmp_path) as (gw, _), httpx.AsyncClient(timeout=25) as http:
        gw.hub.processes["dispatch"].kill()
        await asyncio.sleep(0.5)
        answer = await http.post(f"{gw.base_url}/api/v1/generations", json={"prompt": "no one"}, headers=gw.auth)
        assert answer.status_code == 503, answer.text
        assert "dispatch service running" in answer.json()["error"]["message"], answer.text
