"""What the admin sees of the scheduling (issue 15, part 4), through real registry, prompt, dispatch, stats, gateway
and UI processes and a ComfyUI double whose loader nodes take time to switch models: the statistics record each
model switch (count and time per instance) and show them; the dashboard shows per instance what it runs, what it
holds loaded and its share of the work, and per key its running and waiting jobs beside its limits."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import AsyncIterator
from html import unescape

import httpx
import msgspec
import pytest
from dispatch_support import Hub, add_instance, remove_instance, submit, wait_final
from doubles.comfyui import ComfyUIDouble
from ui_support import Admin, ui_hub

from contracts import endpoints
from contracts.messages.instances import ListInstances
from contracts.messages.jobs import CancelJob, GetSchedulingView
from contracts.messages.keys import CreateApiKey, KeyLimits, RevokeApiKey
from contracts.messages.render_types import GetRenderType, SaveRenderType
from contracts.messages.stats import FigureRow, QueryFigures, QueryLog
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SWITCH_S = 0.6  # what a loader node of the double takes to load its model
CHECKPOINTS = {"views-a": "views-a.safetensors", "views-b": "views-b.safetensors"}


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    async with ui_hub(nats_server.url, tmp_path_factory.mktemp("views")) as running:
        gateway = running.start("gateway")
        await gateway.wait_healthy(running.nc)
        await save_render_types(running)
        yield running


async def save_render_types(hub: Hub) -> None:
    """The shipped sdxl render type on checkpoints of its own, one render type per checkpoint."""
    sdxl = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    for name, ckpt in CHECKPOINTS.items():
        workflow = copy.deepcopy(sdxl.workflow)
        loader = next(node for node in workflow.values() if node["class_type"] == "CheckpointLoaderSimple")
        loader["inputs"]["ckpt_name"] = ckpt
        copy_of = msgspec.structs.replace(sdxl, name=name, workflow=workflow, version=0, is_default=False)
        await call(hub.nc, endpoints.Registry.SAVE, SaveRenderType(render_type=copy_of))


async def started_double(hub: Hub, name: str, **options: object) -> ComfyUIDouble:
    comfy = ComfyUIDouble(name=name, models={"checkpoints": sorted(CHECKPOINTS.values())}, **options)  # type: ignore[arg-type]
    await comfy.start()
    await add_instance(hub.nc, comfy, name)
    deadline = time.monotonic() + 15
    while True:
        listing = await call(hub.nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
        if any(v.health.up and v.health.models for v in listing.instances if v.instance.name == name):
            return comfy
        assert time.monotonic() < deadline, listing
        await asyncio.sleep(0.1)


async def instance_figures(hub: Hub, instance: str, completed: int) -> FigureRow:
    """The stats service's figures of `instance`, once it has recorded `completed` completed jobs there."""
    deadline = time.monotonic() + 30
    while True:
        figures = await call(hub.nc, endpoints.Stats.FIGURES, QueryFigures(group_by="instance", instance=instance))
        row = next((r for r in figures.rows if r.key == instance), None)
        if row is not None and row.completed >= completed:
            return row
        assert time.monotonic() < deadline, figures
        await asyncio.sleep(0.2)


def text_of(html: str, element_id: str, tag: str = "div") -> str:
    """The text of the element with this id, up to the first closing `tag` (its own when nothing nests)."""
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</{tag}>', html, re.S)
    assert found, element_id
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


async def test_model_switches_are_counted_and_timed_per_instance_and_shown(hub: Hub, admin: Admin) -> None:
    comfy = await started_double(hub, "views-switch", work_seconds=0.2, model_switch_seconds=SWITCH_S)
    try:
        # One instance, jobs one after the other: a, a, b, b, a loads a, b and a again (three switches); the
        # second job of each run finds its checkpoint loaded.
        order = ["views-a", "views-a", "views-b", "views-b", "views-a"]
        views = []
        for render_type in order:
            submitted = await submit(hub.nc, f"{render_type} job", render_type=render_type)
            views.append(await wait_final(hub.nc, submitted.job_id))
        assert [v.status for v in views] == ["completed"] * 5, views
        assert [names for names, _ in comfy.model_loads] == [("views-a.safetensors",), ("views-b.safetensors",),
                                                           ("views-a.safetensors",)]  # fmt: skip
        row = await instance_figures(hub, "views-switch", completed=5)
        assert row.model_switches == 3, row
        assert row.model_switch_ms >= 3 * SWITCH_S * 1000, row  # each load slept SWITCH_S in the double
        log = await call(hub.nc, endpoints.Stats.LOG_QUERY, QueryLog(instance="views-switch", limit=10))
        by_job = {record.job_id: record.model_switch_ms for record in log.items}
        switched = [by_job[v.job_id] is not None for v in views]
        assert switched == [True, False, True, False, True], by_job
        # The statistics page shows them per instance.
        table = text_of(await admin.get("/stats"), "model-switches")
        assert re.search(r"views-switch 5 3 \d+\.\d s 60%", table), table
    finally:
        await remove_instance(hub.nc, "views-switch")
        await comfy.stop()


async def test_the_dashboard_shows_each_instances_work_and_each_keys_jobs_beside_its_limits(
    hub: Hub, admin: Admin
) -> None:
    comfy = await started_double(hub, "views-busy", work_seconds=60.0)
    limits = KeyLimits(max_running=1, max_waiting=5, weight=2)
    key = await call(hub.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="views-key", limits=limits))
    idle = await call(hub.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="views-idle", limits=KeyLimits()))
    gateway_url = f"http://127.0.0.1:{hub.processes['gateway'].env['HUB_GATEWAY_PORT']}"
    headers = {"Authorization": f"Bearer {key.secret}"}
    job_ids: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=30) as api:
            for number in range(3):
                submitted = await api.post(
                    "/api/v1/generations", json={"prompt": f"busy {number}", "render_type": "views-a"}
                )
                assert submitted.status_code == 202, submitted.text
                job_ids.append(submitted.json()["job_id"])
        # The key may run one job at a time: one runs, two wait.
        deadline = time.monotonic() + 30
        while True:
            view = await call(hub.nc, endpoints.Dispatch.SCHEDULING_VIEW, GetSchedulingView())
            busy = next((w for w in view.instances if w.instance == "views-busy"), None)
            mine = next((k for k in view.keys if k.api_key_id == key.key.key_id), None)
            if busy and busy.running and mine and (mine.running, mine.waiting) == (1, 2):
                break
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.2)
        assert [job.job_id for job in busy.running] == [job_ids[0]]
        assert busy.loaded_models == ["views-a.safetensors"], busy
        started = sum(w.started_recently for w in view.instances)
        assert busy.started_recently >= 1 and busy.share == pytest.approx(busy.started_recently / started), view

        page = await admin.get("/")
        row = re.search(r'<tr class="instance-row" data-instance="views-busy">(.*?)</tr>', page, re.S)
        assert row, page[:2000]
        cells = [
            " ".join(unescape(re.sub(r"<[^>]+>", " ", c)).split())
            for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
        ]
        assert cells[:5] == ["views-busy", "up", "1 / 1", "views-a", "views-a.safetensors"], cells
        assert cells[5] == f"{round(busy.share * 100)}% ({busy.started_recently})", cells
        policy = text_of(page, "scheduling-policy", "p")
        assert "Scheduling: pull · fair share between keys on" in policy, policy  # the defaults
        keys_table = text_of(page, "keys-work")
        assert "views-key 1 / 1 2 / 5 2" in keys_table, keys_table
        assert "views-idle 0 / ∞ 0 / ∞ 1" in keys_table, keys_table  # an idle key shows its limits too
    finally:
        for job_id in job_ids:
            await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=job_id))
        await remove_instance(hub.nc, "views-busy")
        await comfy.stop()
        await call(hub.nc, endpoints.Gateway.KEYS_REVOKE, RevokeApiKey(key_id=idle.key.key_id))
