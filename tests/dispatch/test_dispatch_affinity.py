"""Model affinity (HUB_DISPATCH_STRATEGY=pull_affinity): real registry, prompt and dispatch processes on real NATS,
ComfyUI doubles whose loader nodes take time to switch models."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

import msgspec
import pytest
from dispatch_support import Hub, pool, save_render_types, submit, wait_final, wait_for
from doubles.comfyui import ComfyUIDouble
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, NoKeysError

from dispatch_service.affinity import MODELS_BUCKET, CostModel, ModelMemory, Server, Waiting, loader_nodes, plan
from dispatch_service.leases import SLOTS_BUCKET, LeaseNote, SlotLeases, instance_key
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow

SWITCH_S = 1.5  # what the dispatcher assumes a switch takes until it measured one
CHECKPOINTS = {"aff-a": "a.safetensors", "aff-b": "b.safetensors"}
AFFINITY_ENV = {"HUB_DISPATCH_STRATEGY": "pull_affinity", "HUB_DISPATCH_MODEL_SWITCH_S": str(SWITCH_S)}


def _workflow(ckpt: str) -> dict:
    workflow = json.loads(resources.files("registry_service").joinpath("seed/sdxl.json").read_text())
    workflow["4"]["inputs"]["ckpt_name"] = ckpt
    return workflow


async def start_hub(nats_url: str, data: Path, **env: str) -> Hub:
    import nats

    running = Hub(nats_url=nats_url, data_dir=data, nc=await nats.connect(nats_url))
    await running.start_all(**env)
    await save_render_types(running.nc, CHECKPOINTS)
    return running


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    running = await start_hub(nats_server.url, tmp_path_factory.mktemp("affinity"), **AFFINITY_ENV)
    yield running
    running.stop_all()
    await running.nc.close()


def double(name: str, work_seconds: float, switch_s: float = 0.3) -> ComfyUIDouble:
    return ComfyUIDouble(
        name=name,
        work_seconds=work_seconds,
        models={"checkpoints": sorted(CHECKPOINTS.values())},
        model_switch_seconds=switch_s,
    )


async def run(nc: NatsClient, render_type: str) -> str:
    """One job, waited for: the instance that ran it."""
    view = await wait_final(nc, (await submit(nc, f"{render_type} job", render_type=render_type)).job_id)
    assert view.status == "completed", view
    return view.instance or ""


def loads(comfy: ComfyUIDouble) -> list[str]:
    return [name for names, _ in comfy.model_loads for name in names]


async def test_a_warm_instance_gets_the_job_when_free_and_is_waited_for_when_it_frees_sooner(hub: Hub) -> None:
    first, second = double("warm-1", 0.1), double("warm-2", 0.1)
    async with pool(hub, ("warm-1", first), ("warm-2", second), probed=True):
        a, b = await asyncio.gather(
            submit(hub.nc, "a", render_type="aff-a"), submit(hub.nc, "b", render_type="aff-b")
        )  # both free and cold: one each
        holder = {(await wait_final(hub.nc, r.job_id)).instance: rt for r, rt in ((a, "aff-a"), (b, "aff-b"))}
        assert set(holder) == {"warm-1", "warm-2"}
        by_type = {rt: name for name, rt in holder.items()}
        # One at a time, both instances free each time: each job goes where its checkpoint is loaded.
        for render_type in ("aff-a", "aff-b", "aff-b", "aff-a", "aff-a", "aff-b"):
            assert await run(hub.nc, render_type) == by_type[render_type]
        # Three jobs of one type at once: the warm instance frees (0.1 s a job) sooner than a switch (1.5 s) would take,
        # so the other instance, free but holding the other checkpoint, is left to it.
        burst = await asyncio.gather(*(submit(hub.nc, f"burst {i}", render_type="aff-a") for i in range(3)))
        views = [await wait_final(hub.nc, r.job_id) for r in burst]
        assert {v.instance for v in views} == {by_type["aff-a"]}
        assert sorted(loads(first) + loads(second)) == sorted(CHECKPOINTS.values())  # each loaded once


async def test_a_job_goes_to_a_cold_free_instance_when_no_warm_one_frees_sooner(hub: Hub) -> None:
    slow, other = double("slow", 2.5), double("other", 0.2)
    async with pool(hub, ("slow", slow), probed=True):
        assert await run(hub.nc, "aff-a") == "slow"  # learns how long aff-a runs there: 2.5 s, more than a switch
        assert await run(hub.nc, "aff-a") == "slow"
        async with pool(hub, ("other", other), probed=True):
            running = await submit(hub.nc, "warm", render_type="aff-a")
            assert (await wait_for(hub.nc, running.job_id, {"running"})).instance == "slow"
            waiting = await submit(hub.nc, "would wait 2.5 s for slow", render_type="aff-a")
            started = await wait_for(hub.nc, waiting.job_id, {"running", "completed"}, timeout_s=2.0)
            assert started.instance == "other"
            assert (await job_status(hub.nc, running.job_id)) == "running"  # it did not wait for the warm one
            assert (await wait_final(hub.nc, waiting.job_id)).status == "completed"
            await wait_final(hub.nc, running.job_id)


async def job_status(nc: NatsClient, job_id: str) -> str:
    from dispatch_support import job

    return (await job(nc, job_id)).status


async def test_the_loaded_models_are_shared_and_forgotten_when_the_instance_restarts(hub: Hub) -> None:
    comfy = double("restarting", 0.1)
    bucket = await hub.nc.jetstream().key_value(MODELS_BUCKET)
    async with pool(hub, ("restarting", comfy), probed=True):
        await run(hub.nc, "aff-b")
        entry = await bucket.get(instance_key("restarting"))
        assert json.loads(entry.value or b"{}")["models"] == ["b.safetensors"]
        await comfy.go_down()
        await asyncio.sleep(0.8)  # a few health rounds: seen down
        await comfy.go_up()
        deadline = time.monotonic() + 5
        while True:
            try:
                entry = await bucket.get(instance_key("restarting"))
            except KeyNotFoundError:
                break  # forgotten
            assert time.monotonic() < deadline, entry
            await asyncio.sleep(0.1)


async def test_jobs_held_by_a_killed_dispatcher_are_handed_back_when_it_restarts(tmp_path: Path) -> None:
    # A private NATS: the job consumer's take-over time (its ack wait) is long here, so only a restarted dispatcher
    # that hands back what it held can start the jobs soon.
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    env = {**AFFINITY_ENV, "HUB_DISPATCH_TAKEOVER_S": "60", "HUB_DISPATCH_STALL_TIMEOUT_S": "20"}
    (tmp_path / "data").mkdir()
    private = await start_hub(server.url, tmp_path / "data", **env)
    comfy = double("kept", 1.0)
    try:
        async with pool(private, ("kept", comfy), probed=True):
            first = await submit(private.nc, "running at the kill", render_type="aff-a")
            await wait_for(private.nc, first.job_id, {"running"})
            held = [await submit(private.nc, f"held {i}", render_type="aff-a") for i in range(2)]
            await _held_in_window(private.nc, [r.job_id for r in held])  # waiting for the only slot
            private.processes["dispatch"].kill()
            restarted = private.start("dispatch", **env)
            await restarted.wait_healthy(private.nc)
            views = [await wait_final(private.nc, r.job_id, timeout_s=20) for r in (first, *held)]
            assert [v.status for v in views] == ["completed"] * 3, restarted.log()
    finally:
        private.stop_all()
        await private.nc.close()
        server.stop()


async def _held_in_window(nc: NatsClient, job_ids: list[str]) -> None:
    """Until the dispatcher has claimed each job (in its window, or already in a slot): not a fixed sleep, since on
    a loaded CI machine 0.5 s was once too short, and a job fetched but not yet claimed at the kill waits out the
    60 s take-over time."""
    kv = await nc.jetstream().key_value(SLOTS_BUCKET)
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while not seen >= set(job_ids):
        assert time.monotonic() < deadline, f"claimed only {seen} of {job_ids}"
        with contextlib.suppress(NoKeysError):
            for key in await kv.keys():
                with contextlib.suppress(KeyNotFoundError):
                    seen.add(msgspec.json.decode((await kv.get(key)).value or b"", type=LeaseNote).job_id)
        await asyncio.sleep(0.05)


async def test_what_one_replica_loads_on_an_instance_the_others_see(nc: NatsClient) -> None:
    one, other = ModelMemory(nc.jetstream()), ModelMemory(nc.jetstream())
    await one.open()
    await other.open()
    try:
        models = frozenset({"shared.safetensors", "lora.safetensors"})
        assert one.hold("shared-instance", models)
        await one.share("shared-instance", models)
        await _until(lambda: other.loaded("shared-instance") == models)
        await other.forget("shared-instance")  # e.g. the other replica saw the instance restart
        await _until(lambda: one.loaded("shared-instance") == frozenset())
    finally:
        await one.close()
        await other.close()


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not seen in time"
        await asyncio.sleep(0.02)


async def test_a_claim_released_while_it_is_being_refreshed_is_gone(nc: NatsClient) -> None:
    # A held job's claim is refreshed by the keep-alive task while the placing task releases it (it started).
    leases = SlotLeases(nc.jetstream(), ttl_s=30)
    await leases.open()
    claim = await leases.hold(LeaseNote(replica="race-test", job_id="job-1", reply="_INBOX.none"))
    assert claim is not None
    refreshed, _ = await asyncio.gather(claim.refresh(), claim.release())
    assert refreshed is True
    # Released, not left for a restart to take over (or to block its slot for the TTL).
    assert await leases.orphans("race-test", []) == []


# -- the placement rule itself ------------------------------------------------------------------------


def test_loader_nodes_are_found_by_input_name_and_by_known_model_files() -> None:
    workflow = copy.deepcopy(_workflow("a.safetensors"))
    workflow["20"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "model": ["4", 0]}}
    workflow["21"] = {"class_type": "CustomLoader", "inputs": {"weights": "custom.pt", "text": "not a model"}}
    found = loader_nodes(workflow, frozenset({"custom.pt"}))
    assert found == {
        "4": frozenset({"a.safetensors"}),
        "20": frozenset({"detail.safetensors"}),
        "21": frozenset({"custom.pt"}),
    }


def test_switch_cost_and_run_time_are_learnt_per_render_type_and_instance() -> None:
    costs = CostModel(default_switch_s=10.0)
    assert (costs.run_s("a", "x"), costs.switch_s("a", "x")) == (None, 10.0)  # nothing measured: the default
    costs.observe("a", "x", 7.0, warm=False)
    assert (costs.run_s("a", "x"), costs.switch_s("a", "x")) == (7.0, 10.0)  # a cold run: an upper bound
    for _ in range(20):
        costs.observe("a", "x", 2.0, warm=True)
    assert costs.run_s("a", "x") == pytest.approx(2.0) and costs.switch_s("a", "x") == pytest.approx(5.0)
    assert (costs.run_s("a", "y"), costs.switch_s("b", "x")) == (None, 10.0)


def _costs(run_s: float, switch_s: float) -> CostModel:
    costs = CostModel(switch_s)
    costs.observe("a", "warm", run_s, warm=True)
    return costs


def test_plan_waits_for_a_warm_instance_only_while_that_is_sooner_than_a_switch() -> None:
    a = frozenset({"a.safetensors"})
    servers = {
        "warm": Server("warm", free_slots=0, loaded=a, frees_in_s=0.5),
        "cold": Server("cold", free_slots=1, loaded=frozenset({"b.safetensors"})),
    }
    one = [Waiting("a", a, able=["warm", "cold"])]
    plan(one, copy.deepcopy(servers), _costs(run_s=2.0, switch_s=5.0))
    assert one[0].placed is None  # 0.5 s < 5 s: waits
    # Three jobs of the same models ahead: the fourth would wait 0.5 + 3 x 2 s > 5 s, so it takes the cold one.
    four = [Waiting("a", a, able=["warm", "cold"]) for _ in range(4)]
    plan(four, copy.deepcopy(servers), _costs(run_s=2.0, switch_s=5.0))
    assert [job.placed for job in four] == [None, None, None, "cold"]
    # Unknown run time: no reason to wait, the free instance takes it.
    unknown = [Waiting("a", a, able=["warm", "cold"])]
    plan(unknown, copy.deepcopy(servers), CostModel(5.0))
    assert unknown[0].placed == "cold"


def test_plan_prefers_the_warm_free_instance_and_fills_every_free_one() -> None:
    a, b = frozenset({"a.safetensors"}), frozenset({"b.safetensors"})
    servers = {
        "holds-b": Server("holds-b", free_slots=1, loaded=b),
        "holds-a": Server("holds-a", free_slots=1, loaded=a),
        "empty": Server("empty", free_slots=1, loaded=frozenset()),
    }
    jobs = [
        Waiting("a", a, able=list(servers)),
        Waiting("b", b, able=list(servers)),
        Waiting("c", frozenset({"c"}), able=list(servers)),
    ]
    plan(jobs, servers, CostModel(5.0))
    assert [job.placed for job in jobs] == ["holds-a", "holds-b", "empty"]
