"""dispatch-service over real NATS with real registry and prompt services, against ComfyUI test doubles."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest
from dispatch_support import (
    Hub,
    checkpoint_of,
    events_of,
    job,
    pool,
    submit,
    wait_final,
    wait_for,
    wait_pool_up,
)
from doubles.comfyui import ComfyUIDouble
from nats.aio.client import Client as NatsClient
from PIL import Image

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.instances import (
    Instance,
    ProbeInstance,
    SaveInstance,
)
from contracts.messages.jobs import CancelJob, InputImage, JobView
from contracts.messages.render_types import GetRenderType, RenderType, SaveRenderType
from contracts.runtime.bus import call, request
from contracts.runtime.storage import ObjectStoreOutputs, PreviewStore
from contracts.streams import OUTPUTS_BUCKET
from dispatch_service.renditions import RENDITION
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    import nats

    nc = await nats.connect(nats_server.url)
    running = Hub(nats_url=nats_server.url, data_dir=tmp_path_factory.mktemp("dispatch"), nc=nc)
    await running.start_all()
    yield running
    running.stop_all()
    await nc.close()


@pytest.fixture(scope="module")
async def checkpoint(hub: Hub) -> str:
    return await checkpoint_of(hub.nc)


# -- instances --------------------------------------------------------------------------------------


async def test_instances_are_validated_probed_and_described(hub: Hub, checkpoint: str) -> None:
    with pytest.raises(HubError) as raised:
        await call(
            hub.nc,
            endpoints.Dispatch.INSTANCES_SAVE,
            SaveInstance(instance=Instance(name="bad", base_url="localhost:8188")),
        )
    assert raised.value.info.field == "instance.base_url"

    comfy = ComfyUIDouble(name="described", models={"checkpoints": [checkpoint]}, device_name="cuda:0 NVIDIA H100")
    async with pool(hub, ("described", comfy)):
        listing = await wait_pool_up(hub.nc, ["described"])
        view = next(v for v in listing.instances if v.instance.name == "described")
        assert view.health.device == "cuda:0 NVIDIA H100"
        assert view.health.vram_total and view.health.node_class_count > 400
        assert any(m.name == checkpoint for m in view.health.models)
        assert "sdxl" in view.compatible_render_types

        with pytest.raises(HubError) as raised:
            await call(
                hub.nc,
                endpoints.Dispatch.INSTANCES_SAVE,
                SaveInstance(instance=Instance(name="described", base_url=comfy.url)),
            )
        assert raised.value.code is ErrorCode.CONFLICT

    # A server that is not there: the probe says so without saving anything.
    health = await call(hub.nc, endpoints.Dispatch.INSTANCES_TEST, ProbeInstance(base_url="http://127.0.0.1:9"))
    assert health.up is False and health.last_error


# -- one generation ------------------------------------------------------------------------------------


async def test_a_generation_runs_end_to_end_with_events_in_order(hub: Hub, checkpoint: str) -> None:
    comfy = ComfyUIDouble(name="solo", models={"checkpoints": [checkpoint]}, work_seconds=0.3)
    async with pool(hub, ("solo", comfy)):
        reply = await submit(hub.nc, "a red fox in the snow", seed=1234, width=512, height=512, steps=8)
        assert reply.status == "queued" and reply.seed == 1234
        done = await wait_final(hub.nc, reply.job_id)
        assert done.status == "completed", done
        assert done.instance == "solo" and done.seed == 1234 and done.attempts == 1
        assert "a red fox in the snow" in done.positive_prompt
        assert done.timings.queue_wait_ms is not None and done.timings.run_ms is not None
        assert len(done.outputs) == 1 and done.outputs[0].content_type == "image/png"

        # What ComfyUI got is the resolved workflow with our values injected.
        sent = comfy.prompts_received[-1]["prompt"]
        assert any(node["inputs"].get("seed") == 1234 for node in sent.values())
        assert any(node["inputs"].get("text", "").startswith(done.positive_prompt[:20]) for node in sent.values())

        # The output is stored and readable by id.
        storage = ObjectStoreOutputs(hub.nc.jetstream())
        data = await storage.read_all(done.outputs[0].output_id)
        assert data.startswith(b"\x89PNG") and len(data) == done.outputs[0].size

        events = await events_of(hub.nc, reply.job_id)
        kinds = [type(e).__struct_config__.tag for e in events]
        assert kinds[:3] == ["accepted", "queued", "started"]
        assert kinds[-2:] == ["output_stored", "completed"]
        percents = [e.percent for e in events if type(e).__struct_config__.tag == "progress"]
        assert percents and percents == sorted(percents) and percents[-1] < 100
        assert done.progress.percent == 100 and done.progress.value == done.progress.max  # its end, not a stale write
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_a_workflow_without_a_negative_prompt_reports_none(hub: Hub, checkpoint: str) -> None:
    flux = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="flux"))
    assert "negative_prompt" not in flux.parameter_map.slots  # the shipped flux guides with FluxGuidance alone
    models: dict[str, list[str]] = {"checkpoints": [checkpoint]}
    for model in flux.requirements.models:
        models.setdefault(model.folder, []).append(model.name)
    comfy = ComfyUIDouble(name="flux-and-sdxl", models=models, work_seconds=0.1)
    async with pool(hub, ("flux-and-sdxl", comfy)):
        flux_job = await submit(hub.nc, "a neon sign", render_type="flux", negative_prompt="blurry, text")
        sdxl_job = await submit(hub.nc, "a neon sign", render_type="sdxl", negative_prompt="blurry, text")
        flux_done, sdxl_done = await wait_final(hub.nc, flux_job.job_id), await wait_final(hub.nc, sdxl_job.job_id)
        assert flux_done.status == sdxl_done.status == "completed", (flux_done, sdxl_done)
        assert flux_done.negative_prompt == ""  # nothing reached ComfyUI, so nothing is reported
        assert "blurry, text" in sdxl_done.negative_prompt
        accepted = (await events_of(hub.nc, flux_job.job_id))[0]
        assert accepted.negative_prompt == ""
        sent = comfy.prompts_received[0]["prompt"]
        assert not any("blurry" in str(node["inputs"]) for node in sent.values())


async def test_progress_of_a_fast_sampler_is_thinned_to_ten_a_second_and_keeps_growing(
    hub: Hub, checkpoint: str
) -> None:
    comfy = ComfyUIDouble(name="quick-steps", models={"checkpoints": [checkpoint]}, work_seconds=0.4)
    async with pool(hub, ("quick-steps", comfy)):
        fast = await submit(hub.nc, "sixty quick steps", seed=5, steps=60)  # a step every few milliseconds
        assert (await wait_final(hub.nc, fast.job_id)).status == "completed"
        events = await events_of(hub.nc, fast.job_id)
        thinned = [e for e in events if type(e).__struct_config__.tag == "progress"]
        assert thinned and [e.percent for e in thinned] == sorted(e.percent for e in thinned)
        assert len(thinned) < 30, thinned  # about one every 0.1 s of a ~0.4 s run (more on a loaded machine)
        gaps = [b.at - a.at for a, b in itertools.pairwise(thinned)]
        assert sum(gap < 0.08 for gap in gaps) <= 2, gaps  # at most ~10 a second (one late callback may bunch)
        steps = [e.value for e in thinned if e.max == 60]
        assert steps and steps == sorted(steps)


# -- load balancing ---------------------------------------------------------------------------------


def execution_spans(double: ComfyUIDouble) -> list[tuple[float, float]]:
    """(start, end) in seconds of each job the instance ran, in order (ComfyUI's own clock)."""
    spans = []
    for prompt_id in double.executed_prompt_ids:
        stamps = {name: data["timestamp"] for name, data in double.history[prompt_id]["status"]["messages"]}
        spans.append((stamps["execution_start"] / 1000, stamps["execution_success"] / 1000))
    return sorted(spans)


def gaps_between_jobs(double: ComfyUIDouble) -> list[float]:
    """Seconds each instance sat idle between finishing one job and starting its next."""
    return [start - previous_end for (_, previous_end), (start, _) in itertools.pairwise(execution_spans(double))]


async def test_a_burst_is_spread_by_pull_and_no_instance_idles_while_jobs_wait(hub: Hub, checkpoint: str) -> None:
    models = {"checkpoints": [checkpoint]}
    doubles = {
        "slow-a": ComfyUIDouble(name="slow-a", models=models, work_seconds=0.4, speed=1),
        "slow-b": ComfyUIDouble(name="slow-b", models=models, work_seconds=0.4, speed=1),
        "fast": ComfyUIDouble(name="fast", models=models, work_seconds=0.4, speed=4),
    }
    async with pool(hub, *doubles.items()):
        replies = await asyncio.gather(*(submit(hub.nc, f"burst {i}", seed=i) for i in range(24)))
        views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in replies]
        assert all(v.status == "completed" for v in views), [v.error for v in views if v.status != "completed"]
        per_instance = Counter(v.instance for v in views)
        # A job costs the fast double 0.1 s and the hub's turnaround; a slow one 0.4 s and the same turnaround.
        # How many more jobs the fast one takes depends on that turnaround, which a loaded machine stretches
        # (0.1-0.3 s on a shared 2-core one: 10-14 of 24, 12 to 6 and 6 as often as not), so the count asks
        # only for more than either slow one; round_robin gives each 8.
        assert per_instance["fast"] > max(per_instance["slow-a"], per_instance["slow-b"]), per_instance
        # All 24 jobs were queued at once, so every gap between two jobs on an instance is time it sat idle
        # while jobs waited. It may only be the hub's turnaround (a few hundredths of a second; more on a loaded
        # CI machine), never a scheduling delay: a missed wake-up or a retry back-off costs up to 0.5 s, and would
        # recur. The turnaround is ~33 ms of dispatch CPU per job, which a shared 2-core machine at load 12-15
        # stretches to a median of 0.02-0.2 s with single gaps of 0.6 s (the same at commits before and after
        # today's dispatch changes): so the median stays under 0.25 s, one gap may reach 1 s, the next not 0.6 s.
        # (How short the turnaround is, is measured by bench/dispatch_bench.py, not asserted here.)
        gaps = sorted(gap for double in doubles.values() for gap in gaps_between_jobs(double))
        assert len(gaps) == 24 - len(doubles)
        assert statistics.median(gaps) < 0.25, gaps
        assert gaps[-1] < 1.0 and gaps[-2] < 0.6, gaps
        # Nor did an instance stop while jobs still waited: whichever finished its last job first, no job
        # started anywhere much later than that (a stall allowed, as above; round_robin leaves the fast one done
        # about 2 s before the slow ones start their last jobs).
        first_done = min(execution_spans(double)[-1][1] for double in doubles.values())
        last_start = max(execution_spans(double)[-1][0] for double in doubles.values())
        assert last_start - first_done < 1.0, {n: execution_spans(d)[-1] for n, d in doubles.items()}


async def test_jobs_go_only_to_instances_that_have_the_models(hub: Hub, checkpoint: str) -> None:
    able = ComfyUIDouble(name="able", models={"checkpoints": [checkpoint]}, work_seconds=0.1)
    lacking = ComfyUIDouble(name="lacking", models={"checkpoints": ["some-other-model.safetensors"]})
    async with pool(hub, ("able", able), ("lacking", lacking)):
        replies = await asyncio.gather(*(submit(hub.nc, f"routed {i}") for i in range(6)))
        views = [await wait_final(hub.nc, r.job_id) for r in replies]
        assert {v.instance for v in views} == {"able"}
        assert lacking.prompts_received == []


async def test_a_render_type_no_instance_can_run_fails_at_once(hub: Hub, checkpoint: str) -> None:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "HubTestOnlyNode", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "hub"}},
    }
    await call(
        hub.nc,
        endpoints.Registry.SAVE,
        SaveRenderType(render_type=RenderType(name="needs-custom-node", workflow=workflow)),
    )
    comfy = ComfyUIDouble(name="stock", models={"checkpoints": [checkpoint]})
    async with pool(hub, ("stock", comfy)):
        started = time.monotonic()
        reply = await submit(hub.nc, "anything", render_type="needs-custom-node")
        assert reply.status == "failed" and "HubTestOnlyNode" in (reply.error or "")
        view = await job(hub.nc, reply.job_id)
        assert view.status == "failed" and "stock lacks node class HubTestOnlyNode" in (view.error or "")
        assert time.monotonic() - started < 2


# -- failover -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_on_one_of(
    hub: Hub, checkpoint: str, names: tuple[str, str], work_seconds: float, prompt: str
) -> AsyncIterator[tuple[JobView, ComfyUIDouble]]:
    """Two instances and a job running on one of them: the job's view and that instance, for the failover tests."""
    models = {"checkpoints": [checkpoint]}
    doubles = {name: ComfyUIDouble(name=name, models=models, work_seconds=work_seconds) for name in names}
    async with pool(hub, *doubles.items()):
        reply = await submit(hub.nc, prompt)
        running = await wait_for(hub.nc, reply.job_id, {"running"})
        yield running, doubles[running.instance or ""]


async def test_a_job_fails_over_when_its_instance_dies_mid_job(hub: Hub, checkpoint: str) -> None:
    async with running_on_one_of(hub, checkpoint, ("first", "second"), 3.0, "failover") as (running, victim):
        await asyncio.sleep(0.5)
        await victim.go_down()
        done = await wait_final(hub.nc, running.job_id, timeout_s=30)
        assert done.status == "completed", done
        assert done.instance != running.instance and done.attempts == 2
        assert done.failures and done.failures[0].startswith(f"{running.instance}:")
        await victim.go_up()


async def test_a_job_fails_over_when_its_instance_hangs(hub: Hub, checkpoint: str) -> None:
    async with running_on_one_of(hub, checkpoint, ("hang-a", "hang-b"), 2.0, "hang") as (running, victim):
        victim.hang()
        done = await wait_final(hub.nc, running.job_id, timeout_s=30)
        victim.hang(False)
        assert done.status == "completed", done
        assert done.instance != running.instance and done.attempts == 2


async def test_a_runtime_error_on_comfyui_fails_the_job_with_the_node_and_cause(hub: Hub, checkpoint: str) -> None:
    comfy = ComfyUIDouble(name="broken", models={"checkpoints": [checkpoint]})
    async with pool(hub, ("broken", comfy)):
        comfy.fail_next_job("torch.OutOfMemoryError", "CUDA out of memory", node="KSampler")
        reply = await submit(hub.nc, "oom")
        done = await wait_final(hub.nc, reply.job_id)
        assert done.status == "failed" and done.attempts == 1
        assert "KSampler" in (done.error or "") and "out of memory" in (done.error or "")


# -- cancellation ---------------------------------------------------------------------------------------


# Stock image nodes only, none with sampler steps: ComfyUI reports them by node (`executing`, `progress_state`).
IMAGE_NODES_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 4, "sigma": 1.0}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "hub/nodes"}},
}


async def save_render_type(nc: NatsClient, name: str, workflow: dict) -> RenderType:
    return await call(nc, endpoints.Registry.SAVE, SaveRenderType(render_type=RenderType(name=name, workflow=workflow)))


async def test_a_node_only_job_reports_progress_from_its_first_node_and_every_second(hub: Hub) -> None:
    await save_render_type(hub.nc, "image-nodes-progress", IMAGE_NODES_WORKFLOW)
    comfy = ComfyUIDouble(name="nodes-only", work_seconds=6.0)  # 1.5 s a node, not one sampler step
    async with pool(hub, ("nodes-only", comfy)):
        reply = await submit(hub.nc, "slow filters", render_type="image-nodes-progress")
        running = await wait_for(hub.nc, reply.job_id, {"running"})
        # The row's progress follows the job too: seen between 0 and 100 while it runs (polled, not read once
        # after a fixed sleep: on a loaded CI machine the row once still said 0 at 2.5 s).
        deadline = time.monotonic() + 30
        while running.status == "running" and not 0 < running.progress.percent < 100:
            assert time.monotonic() < deadline, running.progress
            await asyncio.sleep(0.1)
            running = await job(hub.nc, reply.job_id)
        assert running.status == "running" and 0 < running.progress.percent < 100, running.progress
        done = await wait_final(hub.nc, reply.job_id)
        assert done.status == "completed" and done.progress.percent == 100, done.progress
        events = await events_of(hub.nc, reply.job_id)
        tags = [type(e).__struct_config__.tag for e in events]
        started, completed = events[tags.index("started")], events[tags.index("completed")]
        progress = [e for e in events if type(e).__struct_config__.tag == "progress"]
        assert progress[0].at - started.at < 1.0, (started, progress[0])  # from the first node, not its end (1.5 s)
        stamps = [e.at for e in progress] + [completed.at]
        gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
        assert max(gaps) < 1.35, gaps  # a heartbeat at least once a second, also within one slow node
        percents = [e.percent for e in progress]
        assert percents == sorted(percents) and len({p for p in percents if 0 < p < 100}) >= 3, percents
        assert all(e.nodes_total == len(IMAGE_NODES_WORKFLOW) and e.max == 0 for e in progress)


# An output saved early (node 2), then more work (nodes 3, 4) and a second output (node 5).
TWO_OUTPUTS_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 128}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hub/early"}},
    "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 4, "sigma": 1.0}},
    "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "hub/late"}},
}


async def test_jobs_that_ask_get_a_jpeg_rendition_of_each_opaque_output(hub: Hub, checkpoint: str) -> None:
    """inline_previews (the MCP door's jobs): ComfyUI's JPEG of the output is kept under its id before the job
    completes; a job that did not ask gets none, and one whose rendition fails still completes, without one."""
    comfy = ComfyUIDouble(name="renditions", models={"checkpoints": [checkpoint]})
    previews = PreviewStore(hub.nc.jetstream())
    async with pool(hub, ("renditions", comfy)):
        asked = await wait_final(
            hub.nc, (await submit(hub.nc, "a fox", width=512, height=384, inline_previews=True)).job_id
        )
        plain = await wait_final(hub.nc, (await submit(hub.nc, "a fox", width=512, height=384)).job_id)
        comfy.failing_previews = 1
        failed = await wait_final(hub.nc, (await submit(hub.nc, "an owl", inline_previews=True)).job_id)
    assert [view.status for view in (asked, plain, failed)] == ["completed"] * 3, (asked, plain, failed)
    assert comfy.preview_requests == [RENDITION, RENDITION]
    rendition = await previews.load(asked.outputs[0].output_id)
    assert rendition is not None
    with Image.open(io.BytesIO(rendition)) as image:
        assert (image.format, image.size) == ("JPEG", (512, 384))
    assert await previews.load(plain.outputs[0].output_id) is None
    assert await previews.load(failed.outputs[0].output_id) is None


async def test_an_output_is_downloaded_as_soon_as_its_node_reports_it(hub: Hub) -> None:
    await save_render_type(hub.nc, "two-outputs", TWO_OUTPUTS_WORKFLOW)
    comfy = ComfyUIDouble(name="early-outputs", work_seconds=1.6)  # 0.4 s a node
    async with pool(hub, ("early-outputs", comfy)):
        reply = await submit(hub.nc, "two outputs", render_type="two-outputs")
        done = await wait_final(hub.nc, reply.job_id)
        assert done.status == "completed" and done.attempts == 1, done
        assert sorted(o.filename for o in done.outputs) == ["early_00001_.png", "late_00001_.png"]
        # The early output was fetched while nodes 3-5 still ran (~1.2 s), not after the prompt's end.
        (_, prompt_ended), *_ = comfy.job_spans
        fetched = dict((name, at) for at, name in comfy.view_requests)
        assert prompt_ended - fetched["early_00001_.png"] > 0.6, (prompt_ended, comfy.view_requests)
        storage = ObjectStoreOutputs(hub.nc.jetstream())
        for output in done.outputs:  # stored whole, as ComfyUI wrote them
            assert await storage.read_all(output.output_id) == (comfy.output_dir / "hub" / output.filename).read_bytes()


async def test_an_early_download_that_fails_is_made_again_at_the_end(hub: Hub) -> None:
    await save_render_type(hub.nc, "two-outputs-hiccup", TWO_OUTPUTS_WORKFLOW)
    comfy = ComfyUIDouble(name="view-hiccup", work_seconds=0.8)
    comfy.failing_views = 1  # the early download of node 2's output gets a 500
    async with pool(hub, ("view-hiccup", comfy)):
        reply = await submit(hub.nc, "two outputs", render_type="two-outputs-hiccup")
        done = await wait_final(hub.nc, reply.job_id)
        # The same attempt completed (no retry elsewhere), the early output fetched twice.
        assert done.status == "completed" and done.attempts == 1 and not done.failures, done
        names = [name for _, name in comfy.view_requests]
        assert names.count("early_00001_.png") == 2 and names.count("late_00001_.png") == 1, names
        early = next(o for o in done.outputs if o.filename == "early_00001_.png")
        stored = await ObjectStoreOutputs(hub.nc.jetstream()).read_all(early.output_id)
        assert stored == (comfy.output_dir / "hub" / early.filename).read_bytes()


async def test_cancel_answers_at_once_with_one_wording_for_a_queued_and_a_running_job(hub: Hub) -> None:
    await save_render_type(hub.nc, "image-nodes-cancel", IMAGE_NODES_WORKFLOW)
    comfy = ComfyUIDouble(name="cancel", work_seconds=8.0)  # 2 s a node; ComfyUI stops only between nodes
    async with pool(hub, ("cancel", comfy)):
        first = await submit(hub.nc, "will run, then be cancelled", render_type="image-nodes-cancel")
        second = await submit(hub.nc, "never runs", render_type="image-nodes-cancel")
        await wait_for(hub.nc, first.job_id, {"running"})
        queued = await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=second.job_id))
        assert queued.status == "cancelled" and queued.error == "cancelled by the caller", queued
        await asyncio.sleep(0.5)
        asked = time.monotonic()
        cancelling = await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=first.job_id))
        answered_in = time.monotonic() - asked
        assert cancelling.status == "cancelling", cancelling  # ComfyUI is still in the middle of a node
        assert answered_in < 0.5, answered_in  # not held until that node ends (up to 2 s here)
        again = await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=first.job_id))
        assert again.status in ("cancelling", "cancelled")
        cancelled = await wait_final(hub.nc, first.job_id)
        assert cancelled.status == "cancelled" and cancelled.error == queued.error, cancelled
        assert len(comfy.executed_prompt_ids) == 1  # the queued one never reached ComfyUI
        assert comfy.history[comfy.executed_prompt_ids[0]]["status"]["status_str"] == "error"  # it was interrupted
        events = await events_of(hub.nc, first.job_id)
        assert type(events[-1]).__struct_config__.tag == "cancelled" and events[-1].reason == queued.error


async def test_waiting_jobs_know_their_place_in_the_queue(hub: Hub, checkpoint: str) -> None:
    comfy = ComfyUIDouble(name="one-at-a-time", models={"checkpoints": [checkpoint]}, work_seconds=5.0)
    async with pool(hub, ("one-at-a-time", comfy)):
        running = await submit(hub.nc, "holds the only slot")
        await wait_for(hub.nc, running.job_id, {"running"})
        waiting = [(await submit(hub.nc, "waits, take 0")).job_id]
        await asyncio.sleep(0.5)  # the later jobs are nearer the back of the key's jobs: placed by those after them
        waiting += [(await submit(hub.nc, f"waits, take {n}")).job_id for n in range(1, 3)]
        assert (await job(hub.nc, running.job_id)).queue_position is None
        assert [(await job(hub.nc, job_id)).queue_position for job_id in waiting] == [1, 2, 3]
        await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=waiting[0]))
        assert [(await job(hub.nc, job_id)).queue_position for job_id in waiting] == [None, 1, 2]
        for job_id in [running.job_id, *waiting[1:]]:
            await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=job_id))


async def test_a_repeated_submission_gets_its_first_job_whatever_its_own_preparation_finds(
    hub: Hub, checkpoint: str
) -> None:
    comfy = ComfyUIDouble(name="repeats", models={"checkpoints": [checkpoint]}, work_seconds=5.0)
    async with pool(hub, ("repeats", comfy)):
        running = await submit(hub.nc, "holds the only slot")
        await wait_for(hub.nc, running.job_id, {"running"})
        limited = {"api_key_id": "repeats-key", "max_waiting": 1}
        first = await submit(hub.nc, "waits", job_id=f"repeat-{time.time_ns()}", **limited)
        with pytest.raises(HubError) as raised:  # the key is at its waiting limit: a new job is refused
            await submit(hub.nc, "waits too", **limited)
        assert raised.value.code is ErrorCode.LIMIT_EXCEEDED
        # A repeat (same job id) is answered with the job its first submission made, though its own preparation
        # fails (the waiting limit; a render type that does not exist), which runs beside the look for that job.
        again = await submit(hub.nc, "waits", job_id=first.job_id, **limited)
        odd = await submit(hub.nc, "waits", job_id=first.job_id, render_type="no-such-render-type")
        assert again.job_id == odd.job_id == first.job_id and again.render_type == odd.render_type == first.render_type
        assert (await job(hub.nc, first.job_id)).prompt == "waits"
        for job_id in (running.job_id, first.job_id):
            await call(hub.nc, endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=job_id))


async def test_unknown_jobs_and_bad_requests_get_clear_errors(hub: Hub) -> None:
    with pytest.raises(HubError) as raised:
        await job(hub.nc, "no-such-job")
    assert raised.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(HubError) as raised:
        await submit(hub.nc, "x", width=100)
    assert raised.value.info.field in ("width", "params.width")
    with pytest.raises(HubError) as raised:
        await submit(hub.nc, "x", render_type="no-such-render-type")
    assert raised.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(HubError) as raised:  # a job id must be one subject token (events, queue)
        await submit(hub.nc, "x", job_id="mine.*")
    assert raised.value.code is ErrorCode.INVALID_REQUEST and raised.value.info.field == "job_id"
    with pytest.raises(HubError) as raised:
        await request(hub.nc, endpoints.Dispatch.JOBS_SUBMIT.subject, msgspec.Raw(b'{"prompt": ""}'), JobView)
    assert raised.value.info.field == "prompt"


async def test_an_input_image_is_uploaded_to_the_instance_that_runs_the_job(hub: Hub, checkpoint: str) -> None:
    from doubles.png import encode_solid_png

    picture = encode_solid_png(64, 48, (200, 10, 10))
    comfy = ComfyUIDouble(name="img2img", models={"checkpoints": [checkpoint]}, work_seconds=0.1)
    async with pool(hub, ("img2img", comfy)):
        reply = await submit(
            hub.nc,
            "repaint it",
            render_type="img2img",
            input_image=InputImage(base64=base64.b64encode(picture).decode()),
        )
        done = await wait_final(hub.nc, reply.job_id)
        assert done.status == "completed", done
        loaded = [
            node["inputs"]["image"]
            for node in comfy.prompts_received[-1]["prompt"].values()
            if node["class_type"] == "LoadImage"
        ]
        assert loaded == [f"hub/{reply.job_id}.png"]
        assert (comfy.input_dir / "hub" / f"{reply.job_id}.png").read_bytes() == picture

        # The same picture by URL (served here by the double itself), and the clear errors of bad inputs.
        view_url = f"{comfy.url}/view?filename={reply.job_id}.png&subfolder=hub&type=input"
        by_url = await submit(hub.nc, "again", render_type="img2img", input_image=InputImage(url=view_url))
        assert (await wait_final(hub.nc, by_url.job_id)).status == "completed"
        # An output of an earlier job, by its id in the hub's store (e.g. to upscale it).
        earlier = (await wait_final(hub.nc, by_url.job_id)).outputs[0]
        by_id = await submit(
            hub.nc, "once more", render_type="img2img", input_image=InputImage(stored_id=earlier.output_id)
        )
        assert (await wait_final(hub.nc, by_id.job_id)).status == "completed"
        outputs = ObjectStoreOutputs(hub.nc.jetstream())
        stored = await outputs.read_all(earlier.output_id)
        assert (comfy.input_dir / "hub" / f"{by_id.job_id}.png").read_bytes() == stored
        # A finished job's own copy of its input image is removed; the image it came from (an output) is not.
        bucket = await hub.nc.jetstream().object_store(OUTPUTS_BUCKET)
        names = {info.description for info in await bucket.list(ignore_deletes=True)}
        assert not any(f'"{by_id.job_id}.png"' in (name or "") for name in names), names
        assert await outputs.info(earlier.output_id) is not None
        for bad, field in (
            (InputImage(base64="not base64!"), "input_image.base64"),
            (InputImage(base64=base64.b64encode(b"plain text").decode()), "input_image.base64"),
            (InputImage(url="http://127.0.0.1:9/nothing.png"), "input_image.url"),
            (InputImage(url="ftp://example/x.png"), "input_image.url"),
            (InputImage(stored_id="no-such-image"), "input_image.stored_id"),
            (InputImage(url=view_url, stored_id=earlier.output_id), "input_image"),
            (InputImage(), "input_image"),
        ):
            with pytest.raises(HubError) as raised:
                await submit(hub.nc, "x", render_type="img2img", input_image=bad)
            assert raised.value.info.field == field, raised.value.info
        # Only the allowlisted loopback address is fetched from: the rest of the hub's network stays out of reach.
        for url, rule in (
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            (f"http://[::1]:{comfy.port}/", "loopback"),
        ):
            with pytest.raises(HubError) as raised:
                await submit(hub.nc, "x", render_type="img2img", input_image=InputImage(url=url))
            assert raised.value.info.details is not None and raised.value.info.details["rule"] == rule, (
                raised.value.info
            )
