"""Nothing is lost: jobs survive a kill -9 of the dispatcher mid-burst and a restart of NATS itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from dispatch_support import Hub, add_instance, checkpoint_of, submit, wait_final
from doubles.comfyui import ComfyUIDouble

from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


async def start_hub(server: NatsServer, data: Path) -> Hub:
    data.mkdir(parents=True, exist_ok=True)
    hub = Hub(nats_url=server.url, data_dir=data, nc=await nats.connect(server.url, max_reconnect_attempts=-1))
    await hub.start_all()
    return hub


async def test_every_job_of_a_burst_ends_after_the_dispatcher_is_killed(private_nats: NatsServer, tmp_path: Path):
    hub = await start_hub(private_nats, tmp_path / "data")
    doubles = []
    try:
        ckpt = await checkpoint_of(hub.nc)
        for i in range(3):
            double = ComfyUIDouble(name=f"k{i}", models={"checkpoints": [ckpt]}, work_seconds=0.3)
            await double.start()
            await add_instance(hub.nc, double, f"k{i}")
            doubles.append(double)
        await asyncio.sleep(0.5)
        replies = await asyncio.gather(*(submit(hub.nc, f"survivor {i}", seed=i) for i in range(30)))

        # Kill -9 once about a third of the burst is done, while jobs are running on every instance.
        deadline = time.monotonic() + 30
        while sum(len(d.executed_prompt_ids) for d in doubles) < 10:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        hub.processes["dispatch"].kill()
        killed_at = time.monotonic()
        await asyncio.sleep(0.5)
        restarted = hub.start("dispatch")
        await restarted.wait_healthy(hub.nc)

        views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in replies]
        assert [v.status for v in views] == ["completed"] * 30, [(v.job_id, v.status, v.error) for v in views]
        assert all(len(v.outputs) == 1 for v in views)
        # Jobs that were running when the dispatcher died ran again (attempt 2) on the new one.
        assert any(v.attempts == 2 for v in views), [v.attempts for v in views]
        assert time.monotonic() - killed_at < 45
    finally:
        for double in doubles:
            await double.stop()
        hub.stop_all()
        await hub.nc.close()


async def test_queued_jobs_survive_a_restart_of_nats(private_nats: NatsServer, tmp_path: Path):
    hub = await start_hub(private_nats, tmp_path / "data")
    ckpt = await checkpoint_of(hub.nc)
    double = ComfyUIDouble(name="later", models={"checkpoints": [ckpt]}, work_seconds=0.05)
    try:
        await double.start()
        await add_instance(hub.nc, double, "later")
        await asyncio.sleep(0.5)  # probed once: its capabilities are known
        await double.go_down()  # the only instance is down: jobs wait in the stream
        await asyncio.sleep(0.5)
        replies = await asyncio.gather(*(submit(hub.nc, f"patient {i}", seed=i) for i in range(5)))
        assert {r.status for r in replies} == {"queued"}

        private_nats.stop()  # NATS goes away with the jobs in its file store...
        await asyncio.sleep(1.0)
        private_nats.start()  # ...and comes back on the same port and store
        await double.go_up()

        views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in replies]
        assert [v.status for v in views] == ["completed"] * 5, [(v.status, v.error) for v in views]
    finally:
        await double.stop()
        hub.stop_all()
        await hub.nc.close()
