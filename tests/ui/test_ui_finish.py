"""The small things that tell an admin the tool is finished (issue 14, part 4), over HTTP through the real
services: counts in words, the favicon, the dashboard's instance figure, the statistics page's log (links, the
period, partial instance names, medians of jobs that ran) and the job page of a job that produced nothing."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from html import unescape

import pytest
from dispatch_support import Hub, add_instance, checkpoint_of
from doubles.comfyui import ComfyUIDouble
from stats_support import JobScript, publish
from ui_support import Admin, ui_hub

from contracts import endpoints
from contracts.messages.instances import Instance, InstanceView, SaveInstance
from contracts.messages.stats import LogPage, QueryLog
from contracts.runtime.bus import request
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    async with ui_hub(nats_server.url, tmp_path_factory.mktemp("ui-finish"), HUB_UI_COMFYUI_PROBE_URL="") as running:
        yield running


def text_of(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


async def test_every_page_has_an_icon(admin: Admin) -> None:
    assert '<link rel="icon" href="/static/favicon.svg"' in await admin.get("/")
    icon = await admin.client.get("/favicon.ico", follow_redirects=True)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


async def test_disabled_instances_are_not_down_and_counts_read_as_english(hub: Hub, admin: Admin) -> None:
    checkpoint = await checkpoint_of(hub.nc)
    async with ComfyUIDouble(models={"checkpoints": [checkpoint]}) as comfy:
        await add_instance(hub.nc, comfy, "one-model")
        switched_off = Instance(name="switched-off", base_url="http://127.0.0.1:9", enabled=False)
        await request(
            hub.nc, endpoints.Dispatch.INSTANCES_SAVE.subject, SaveInstance(instance=switched_off), InstanceView
        )
        for _ in range(50):
            dashboard = text_of(await admin.get("/"))
            if "1 of 1 up" in dashboard:
                break
            await asyncio.sleep(0.2)
        assert "Instances 1 of 1 up · 1 disabled" in dashboard
        assert "1 model" in text_of(await admin.get("/instances")) and "1 models" not in await admin.get("/instances")
    delete_page = text_of(await admin.get("/render-types/upscale/delete"))
    assert "and its one version of its history" in delete_page and "all 1 version" not in delete_page


async def test_the_statistics_log_links_follows_the_period_and_finds_part_of_a_name(hub: Hub, admin: Admin) -> None:
    now = time.time()
    scripts = [
        JobScript("finish-ran", now - 120, instance="gpu-alpha-1", prompt="ran on alpha"),
        JobScript("finish-cancelled", now - 100, outcome="cancelled", instance=None, queue_s=None, prompt="never ran"),
        JobScript("finish-old", now - 20 * 86400, instance="gpu-alpha-2", prompt="three weeks ago"),
    ]
    js = hub.nc.jetstream()
    for script in scripts:
        for event in script.events():
            await publish(js, event)
    for _ in range(100):
        logged = await request(hub.nc, endpoints.Stats.LOG_QUERY.subject, QueryLog(text="finish"), LogPage)
        if len(logged.items) == 3 and all(i.status in ("completed", "cancelled") for i in logged.items):
            break
        await asyncio.sleep(0.2)

    stats = await admin.get("/stats?days=14")
    assert 'href="/jobs/finish-ran"' in stats  # a log row opens its job
    assert "finish-old" not in stats and "three weeks ago" not in stats  # older than the 14 days in the header
    assert "three weeks ago" in await admin.get("/stats?days=30")
    median = re.search(r'<svg[^>]*aria-label="run time".*?</svg>', stats, re.S).group(0)
    assert "(none)" not in median and "gpu-alpha-1" in median  # a job that never ran has no run time
    found = text_of(await admin.get("/stats?days=30&instance=ALPHA"))
    assert "ran on alpha" in found and "three weeks ago" in found and "never ran" not in found
    assert "2 rows" in found


async def test_a_running_job_counts_its_time_and_a_video_without_a_file_says_so(hub: Hub, admin: Admin) -> None:
    from dispatch_support import remove_instance, wait_for

    from contracts import endpoints
    from contracts.messages.render_types import GetRenderType
    from contracts.runtime.bus import call

    video = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="video"))
    models: dict[str, list[str]] = {}
    for model in video.requirements.models:
        models.setdefault(model.folder, []).append(model.name)
    async with ComfyUIDouble(models=models, work_seconds=3) as comfy:
        await add_instance(hub.nc, comfy, "video-box")
        try:
            form = {"prompt": "waves", "render_type": "video", "count": "1", "style_mode": "default"}
            submitted = await admin.post(
                "/generate", form, from_page="/generate", files={"input_image_file": ("", b"")}
            )
            job_path = submitted.headers["location"]
            job_id = job_path.removeprefix("/jobs/")
            await wait_for(hub.nc, job_id, {"running"})
            await asyncio.sleep(1.2)
            running = await admin.get(job_path)
            shown = re.search(r'running for <span id="job-ran" data-seconds="([0-9.]+)">', running)
            assert shown and float(shown.group(1)) >= 1.0, text_of(running)  # the time since it started
            done = await wait_for(hub.nc, job_id, {"completed", "failed"}, timeout_s=60)
            page = text_of(await admin.get(job_path))
            # The double's SaveAnimatedWEBP writes no file, as a video node that saves nothing.
            assert done.status == "failed" and "left no output the hub can store" in page
        finally:
            await remove_instance(hub.nc, "video-box")


async def test_the_event_stream_of_what_cannot_be_a_job_id_is_not_found(admin: Admin) -> None:
    # `*` would otherwise be a subject filter over every job's events: the stream would replay them all.
    for raw in ("*", "%3E", "a.b"):
        answer = await admin.client.get(f"/jobs/{raw}/events", timeout=10)
        assert answer.status_code == 404, (raw, answer.status_code)
        assert "a job id is letters, digits" in text_of(answer.text)
