"""The cluster rehearsal: 3 clustered NATS servers and 2 replicas of every service survive losing one NATS
server and one dispatcher (both SIGKILL) in the middle of a burst of jobs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from dispatch_support import DISPATCH_ENV, add_instance, checkpoint_of, wait_final
from doubles.comfyui import ComfyUIDouble
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import HubError
from contracts.messages.instances import ListInstances
from contracts.messages.jobs import GenerationRequest, JobView
from contracts.runtime.bus import call
from hub_deploy.cluster import NATS_NODES, ClusterRehearsal
from hub_deploy.services import SERVICES, ping_all

pytestmark = pytest.mark.slow

BURST = 16


async def wait_pool_up(nc: NatsClient, names: list[str], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        listing = await call(nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
        if set(names) <= {v.instance.name for v in listing.instances if v.health.up}:
            return
        assert time.monotonic() < deadline, listing
        await asyncio.sleep(0.1)


async def submit_retrying(nc: NatsClient, index: int, timeout_s: float = 20) -> str:
    """Submit one job; a request that lands while a NATS server or a dispatcher just died is sent again, as a
    client of the hub would (the test then checks that no job is lost or doubled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            prompt = GenerationRequest(prompt=f"a lighthouse at dusk, take {index}")
            # A short timeout: a request the killed dispatcher had taken is never answered.
            return (await call(nc, endpoints.Dispatch.JOBS_SUBMIT, prompt, timeout=5)).job_id
        except HubError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def final_retrying(nc: NatsClient, job_id: str, timeout_s: float = 45) -> JobView:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await wait_final(nc, job_id, timeout_s=max(1.0, deadline - time.monotonic()))
        except HubError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_cluster_survives_a_nats_server_and_a_dispatcher_killed_mid_burst(tmp_path: Path) -> None:
    rehearsal = ClusterRehearsal(root=tmp_path, replicas=2, extra_env={**DISPATCH_ENV, "HUB_SHUTDOWN_TIMEOUT_S": "3"})
    doubles: list[ComfyUIDouble] = []
    nc: NatsClient | None = None
    try:
        rehearsal.start_nats()
        assert len(rehearsal.nats) == NATS_NODES
        nc = await nats.connect(
            servers=[server.url for server in rehearsal.nats], max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        await rehearsal.wait_jetstream(nc)
        rehearsal.start_services()
        try:
            await rehearsal.wait_healthy(nc, timeout_s=60)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\n{logs_of(rehearsal)}") from None

        # Every replica of every service registered, each with its own process.
        replicas = await ping_all(nc, wait_s=1.0)
        per_service = Counter(str(r["name"]) for r in replicas)
        assert per_service == {f"hub-{name}": 2 for name, _ in SERVICES}, per_service
        assert len({r["metadata"]["pid"] for r in replicas}) == 2 * len(SERVICES)  # type: ignore[index]

        checkpoint = await checkpoint_of(nc)
        for index in range(2):
            double = ComfyUIDouble(name=f"comfy-{index}", models={"checkpoints": [checkpoint]}, work_seconds=0.4)
            await double.start()
            doubles.append(double)
            await add_instance(nc, double, f"comfy-{index}", slots=2)
        # Both dispatchers learn of the instances, although each was saved through only one of them.
        await wait_pool_up(nc, ["comfy-0", "comfy-1"])
        victim = rehearsal.nats[0]  # may lead streams or consumers: their leadership moves when it dies

        job_ids = [await submit_retrying(nc, index) for index in range(BURST // 2)]
        # Mid-burst: one NATS server and one dispatcher die without warning.
        victim.kill()
        rehearsal.replicas_of("dispatch")[0].kill()
        job_ids += [await submit_retrying(nc, index) for index in range(BURST // 2, BURST)]

        assert len(set(job_ids)) == BURST
        views = await asyncio.gather(*(final_retrying(nc, job_id) for job_id in job_ids))
        statuses = Counter(view.status for view in views)
        why = [f"{v.job_id}: {v.status}: {v.error} (earlier attempts: {v.failures})" for v in views if v.error]
        assert statuses == {"completed": BURST}, f"{statuses}\n" + "\n".join(why) + f"\n{logs_of(rehearsal)}"
        # The survivors kept serving: one dispatcher left, the other services still at two replicas.
        survivors = Counter(str(r["name"]) for r in await ping_all(nc, wait_s=1.0))
        assert survivors["hub-dispatch"] == 1 and survivors["hub-registry"] == 2, survivors
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        for double in doubles:
            await double.stop()
        await asyncio.to_thread(rehearsal.stop)


def logs_of(rehearsal: ClusterRehearsal, tail: int = 3000) -> str:
    parts = []
    for replica in rehearsal.processes:
        text = replica.log()
        if "error" in text.lower() or not replica.alive():
            parts.append(f"--- {replica.label} ---\n{text[-tail:]}")
    return "\n".join(parts)
