"""Fair share between API keys, through real registry, prompt and two dispatch replicas on real NATS and a ComfyUI
double with one slot (so the order in which the double receives jobs is the order they started): a key's burst
does not starve another key, each key's jobs start in their order, and a key's weight changes its share.

Jobs are submitted over NATS with the fields the gateway fills from the key (api_key_id, weight), as the gateway
sends them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from dispatch_support import Hub, add_instance, checkpoint_of, job, remove_instance, submit, wait_final, wait_for
from doubles.comfyui import ComfyUIDouble
from harness import ServiceProcess

from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow

RUN_S = 0.2


@contextlib.asynccontextmanager
async def two_replica_hub(nats_url: str, data: Path, strategy: str) -> AsyncIterator[Hub]:
    """Registry, prompt and two dispatch replicas sharing one data folder (database), as a cluster runs them."""
    import nats

    running = Hub(nats_url=nats_url, data_dir=data, nc=await nats.connect(nats_url))
    replicas: list[ServiceProcess] = []
    try:
        for name in ("registry", "prompt", "dispatch"):
            running.start(name, HUB_DISPATCH_STRATEGY=strategy)
        replicas.append(running.processes["dispatch"])
        replicas.append(running.start("dispatch", HUB_DISPATCH_STRATEGY=strategy))
        for process in (running.processes["registry"], running.processes["prompt"], *replicas):
            await process.wait_healthy(running.nc)
        running.processes["dispatch-2"] = replicas[1]  # stopped with the others; `dispatch` names the first
        yield running
    finally:
        for process in replicas:
            process.kill()
        running.stop_all()
        await running.nc.close()


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    async with two_replica_hub(nats_server.url, tmp_path_factory.mktemp("fair-share"), "pull") as running:
        yield running


async def run_order(
    hub: Hub,
    name: str,
    batches: list[tuple[str, int, int]],
    while_waiting: Callable[[dict[str, str]], Awaitable[None]] | None = None,
) -> list[str]:
    """Submit, while a blocker job holds the double's only slot, `count` jobs of each (key, count, weight) batch in
    turn; returns the keys' job labels ("A3": key A's third) in the order the double started them. `while_waiting`
    is given label -> job id while every job still waits."""
    double = ComfyUIDouble(name=name, models={"checkpoints": [await checkpoint_of(hub.nc)]}, work_seconds=2.0)
    await double.start()
    try:
        await add_instance(hub.nc, double, name, slots=1)
        blocker = await submit(hub.nc, "a job that holds the slot")
        await wait_for(hub.nc, blocker.job_id, {"running"}, timeout_s=30)
        label: dict[str, str] = {}
        for key, count, weight in batches:
            for index in range(1, count + 1):
                reply = await submit(hub.nc, f"{key} job {index}", api_key_id=f"key_{name}_{key}", weight=weight)
                label[reply.job_id] = f"{key}{index}"
        if while_waiting is not None:
            await while_waiting({text: job_id for job_id, text in label.items()})
        double.work_seconds = RUN_S
        for job_id in label:
            assert (await wait_final(hub.nc, job_id, timeout_s=120)).status == "completed"
        started = [prompt_id.rsplit("-", 1)[0] for prompt_id in double.executed_prompt_ids]
        assert started[0] == blocker.job_id, started
        order = [label[job_id] for job_id in started if job_id != blocker.job_id]
        assert sorted(order) == sorted(label.values()), order  # each job ran once, with two replicas placing them
        return order
    finally:
        await remove_instance(hub.nc, name)
        await double.stop()


def positions(order: list[str], key: str) -> list[int]:
    return [index for index, label in enumerate(order) if label.startswith(key)]


async def test_a_burst_of_one_key_does_not_starve_another_and_each_keys_jobs_keep_their_order(hub: Hub) -> None:
    places: dict[str, int | None] = {}

    async def note_places(job_of: dict[str, str]) -> None:
        for text in ("B3", "A12"):
            view = await job(hub.nc, job_of[text])
            assert view.status in ("accepted", "queued"), view
            places[text] = view.queue_position

    order = await run_order(hub, "fair-burst", [("A", 12, 1), ("B", 3, 1)], note_places)
    # The job view tells the place fair share gives: B's last job is not behind all of A's.
    assert places["B3"] is not None and places["B3"] <= 7 and places["A12"] == 15, places
    # Oldest first would start B's jobs after all twelve of A's; fair share takes turns between the keys.
    assert max(positions(order, "B")) < 7, order
    # Within each key, the jobs started in the order they were submitted.
    assert [label for label in order if label.startswith("A")] == [f"A{i}" for i in range(1, 13)], order
    assert [label for label in order if label.startswith("B")] == [f"B{i}" for i in range(1, 4)], order


async def test_a_keys_weight_gives_it_a_larger_share(hub: Hub) -> None:
    # Both keys have more jobs waiting than the first eight starts take; B weighs three times as much as A.
    order = await run_order(hub, "fair-weight", [("A", 8, 1), ("B", 8, 3)])
    first = order[:8]
    assert sum(label.startswith("B") for label in first) >= 5, order
    equal = await run_order(hub, "fair-equal", [("A", 8, 1), ("B", 8, 1)])
    assert 3 <= sum(label.startswith("B") for label in equal[:8]) <= 5, equal
