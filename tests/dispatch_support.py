"""Shared pieces of the dispatch tests: a hub of real registry, prompt and dispatch processes on the test
session's NATS, and helpers to register ComfyUI test doubles and follow jobs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from doubles.comfyui import ComfyUIDouble
from harness import ServiceProcess, hub_env
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.events import GenerationEvent
from contracts.messages.instances import (
    DeleteInstance,
    Instance,
    InstanceList,
    InstanceView,
    ListInstances,
    SaveInstance,
)
from contracts.messages.jobs import FINAL_STATUSES, GenerationRequest, GetJob, JobView, SubmitReply
from contracts.messages.render_types import GetRenderType, SaveRenderType
from contracts.messages.stats import (
    GetGeneration,
    RetentionPolicy,
    RetentionReport,
    RunRetention,
    SaveRetention,
)
from contracts.runtime.bus import call
from contracts.streams import event_subject

DISPATCH_ENV = {
    "HUB_DISPATCH_HEALTH_INTERVAL_S": "0.2",
    "HUB_DISPATCH_STALL_TIMEOUT_S": "1.5",
    "HUB_DISPATCH_TAKEOVER_S": "3",
    "HUB_DISPATCH_MAX_ATTEMPTS": "3",
    "HUB_REQUEST_TIMEOUT_S": "10",
    # The ComfyUI doubles, whose /view serves input images by URL, listen on loopback, which is refused by default.
    "HUB_INPUT_URL_ALLOW": "127.0.0.1",
}


@dataclass
class Hub:
    nats_url: str
    data_dir: Path
    nc: NatsClient
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def start(self, name: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(
            name=name,
            env=hub_env(self.nats_url, self.data_dir, **{**DISPATCH_ENV, **env}),
            log_path=self.data_dir / f"{name}-{int(time.time() * 1000)}.log",
        )
        process.start()
        running = self.processes.get(name)
        if running is not None and running.process is not None and running.process.poll() is None:
            # A second replica under the same name: the first keeps a name of its own, so stop_all still kills it.
            self.processes[f"{name} (pid {running.process.pid})"] = running
        self.processes[name] = process
        return process

    async def start_all(self, **env: str) -> None:
        for name in ("registry", "prompt", "dispatch"):
            self.start(name, **env)
        for name in ("registry", "prompt", "dispatch"):
            await self.processes[name].wait_healthy(self.nc)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()


async def checkpoint_of(nc: NatsClient, render_type: str = "sdxl") -> str:
    """The checkpoint file the shipped render type needs: the doubles that should run it are given it."""
    rt = await call(nc, endpoints.Registry.GET, GetRenderType(name=render_type))
    return next(m.name for m in rt.requirements.models if m.folder == "checkpoints")


async def add_instance(nc: NatsClient, double: ComfyUIDouble, name: str, *, slots: int = 1) -> InstanceView:
    return await call(
        nc,
        endpoints.Dispatch.INSTANCES_SAVE,
        SaveInstance(instance=Instance(name=name, base_url=double.url, slots=slots)),
    )


async def remove_instance(nc: NatsClient, name: str) -> None:
    await call(nc, endpoints.Dispatch.INSTANCES_DELETE, DeleteInstance(name=name))


async def wait_pool_up(
    nc: NatsClient, names: list[str], *, probed: bool = False, timeout_s: float = 10
) -> InstanceList:
    """Until the named instances are up (and with `probed`, their models known)."""
    deadline = time.monotonic() + timeout_s
    while True:
        listing = await call(nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
        up = {v.instance.name for v in listing.instances if v.health.up and (v.health.models or not probed)}
        if set(names) <= up:
            return listing
        assert time.monotonic() < deadline, listing
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def pool(
    hub: Hub, *doubles: tuple[str, ComfyUIDouble], slots: int = 1, probed: bool = False
) -> AsyncIterator[None]:
    """Register the doubles as instances for the time of a test (once up: see wait_pool_up), then remove them."""
    try:
        for name, double in doubles:
            await double.start()
            await add_instance(hub.nc, double, name, slots=slots)
        await wait_pool_up(hub.nc, [name for name, _ in doubles], probed=probed)
        yield
    finally:
        for name, double in doubles:
            with contextlib.suppress(HubError):
                await remove_instance(hub.nc, name)
            await double.stop()


async def submit(nc: NatsClient, prompt: str = "a lighthouse at dusk", **fields: object) -> SubmitReply:
    return await call(nc, endpoints.Dispatch.JOBS_SUBMIT, GenerationRequest(prompt=prompt, **fields), timeout=30)


async def job(nc: NatsClient, job_id: str) -> JobView:
    return await call(nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))


async def wait_for(nc: NatsClient, job_id: str, statuses: set[str], timeout_s: float = 30.0) -> JobView:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            view = await job(nc, job_id)
        except HubError as exc:  # the test's own connection is reconnecting (NATS restarted): ask again
            if exc.code != ErrorCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        if view.status in statuses:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {view.status}, not {statuses}, after {timeout_s} s: {view}")
        await asyncio.sleep(0.05)


async def wait_final(nc: NatsClient, job_id: str, timeout_s: float = 30.0) -> JobView:
    return await wait_for(nc, job_id, set(FINAL_STATUSES), timeout_s)


async def events_of(nc: NatsClient, job_id: str, until_final: bool = True, timeout_s: float = 30.0) -> list:
    """Every generation event of one job, read back from JetStream in order."""
    js = nc.jetstream()
    sub = await js.subscribe(event_subject(job_id), ordered_consumer=True)
    found: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            found.append(msgspec.json.decode(msg.data, type=GenerationEvent))
            if until_final and type(found[-1]).__struct_config__.tag in FINAL_STATUSES:
                break
    finally:
        await sub.unsubscribe()
    return found


async def _age_log_row(hub: Hub, job_id: str, seconds: int) -> None:
    """Make a job's stats log row look `seconds` older, in whichever database the stats service was given."""
    sql = "UPDATE generation SET logged_at = logged_at - ? WHERE job_id = ?"
    url = hub.processes["stats"].env.get("HUB_STATS_DATABASE_URL", "")
    if url.startswith("postgresql"):  # the suite run on PostgreSQL (tests/postgres_support.py)
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            await connection.execute(sql.replace("?", "$1", 1).replace("?", "$2", 1), float(seconds), job_id)
        finally:
            await connection.close()
        return
    with contextlib.closing(sqlite3.connect(hub.data_dir / "stats.sqlite3", timeout=10)) as db:
        db.execute(sql, (seconds, job_id))
        db.commit()


async def retention_removes_images_of(hub: Hub, job_id: str) -> RetentionReport:
    """Run the real retention (stats service -> dispatcher) so that it removes this finished job's images: the
    job's stats log row is made to look 40 days old (retention picks jobs by that row's time, and a test cannot
    wait a month), the policy keeps images 30 days, and one run is asked for. Nothing else is touched."""
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(HubError):
            record = await call(hub.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id=job_id))
            if record.status in FINAL_STATUSES:
                break
        assert time.monotonic() < deadline, f"job {job_id} never reached the stats log"
        await asyncio.sleep(0.1)
    await _age_log_row(hub, job_id, 40 * 86400)
    policy = RetentionPolicy(keep_images_days=30, keep_log_days=0, run_every_hours=168)
    await call(hub.nc, endpoints.Stats.RETENTION_SAVE, SaveRetention(policy=policy))
    return await call(hub.nc, endpoints.Stats.RETENTION_RUN, RunRetention())


async def save_render_types(nc: NatsClient, checkpoints: dict[str, str]) -> None:
    """The shipped sdxl render type (prompt and seed mapped, so every job differs) once per checkpoint: render type
    name -> checkpoint file it loads."""
    sdxl = await call(nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    for name, ckpt in checkpoints.items():
        workflow = copy.deepcopy(sdxl.workflow)
        loader = next(node for node in workflow.values() if node["class_type"] == "CheckpointLoaderSimple")
        loader["inputs"]["ckpt_name"] = ckpt
        copy_of = msgspec.structs.replace(sdxl, name=name, workflow=workflow, version=0, is_default=False)
        await call(nc, endpoints.Registry.SAVE, SaveRenderType(render_type=copy_of))
