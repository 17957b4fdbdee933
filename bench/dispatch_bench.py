"""Dispatch benchmark: load balancing and per-job overhead of the hub.

    .venv/bin/python bench/dispatch_bench.py [--jobs 200] [--work 2.0] [--slots 1 2] [--overhead-jobs 100]

1. Makespan: a burst of jobs over 4 ComfyUI test doubles of speeds 1x, 1x, 2x, 4x, once with the `pull`
   strategy and once with `round_robin`; each makespan is divided by the ideal (total work / total speed).
2. Overhead: the median time of one job through the hub (submit over NATS -> completed event, output stored)
   minus the median of a direct ComfyUI client run (submit, follow, fetch the output) against the same
   instant double, jobs one after the other (a hub job and a direct run in turn).

Per instance, the makespan part also prints what the double measured: its busy time beside the nominal work
(the difference is the double's own cost per job: encoding the PNG, its messages, timer slack on a busy machine)
and the gaps between two jobs (the time the hub takes to start the next job once one ends). Short jobs make both
weigh more: compare `--work 0.5` with the default.

Everything runs on this machine: a nats-server, the registry, prompt and dispatch services as processes,
and the doubles in this process. Figures are printed; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import msgspec
import nats
from doubles.comfyui import ComfyUIDouble
from harness import ServiceProcess, hub_env

from contracts import endpoints
from contracts.messages.events import GenerationEvent
from contracts.messages.instances import DeleteInstance, Instance, SaveInstance
from contracts.messages.jobs import GenerationRequest
from contracts.messages.render_types import (
    GenerationParams,
    GetRenderType,
    ResolveRenderType,
)
from contracts.runtime.bus import call
from contracts.streams import EVENTS_SUBJECTS
from dispatch_service.comfyui import ComfyClient
from hub_deploy.natsserver import NatsServer

SPEEDS = (1.0, 1.0, 2.0, 4.0)
ENV = {"HUB_LOG_LEVEL": "warning", "HUB_DISPATCH_HEALTH_INTERVAL_S": "0.5"}


async def start_hub(nats_url: str, data: Path, log_suffix: str = "", **env: str) -> list[ServiceProcess]:
    """The registry, prompt and dispatch services as processes on `data` (ENV and `env` set), healthy on return."""
    processes = []
    data.mkdir(parents=True, exist_ok=True)
    for name in ("registry", "prompt", "dispatch"):
        process_env = hub_env(nats_url, data, **{**ENV, **env})
        process = ServiceProcess(name=name, env=process_env, log_path=data / f"{name}{log_suffix}.log")
        process.start()
        processes.append(process)
    nc = await nats.connect(nats_url)
    for process in processes:
        await process.wait_healthy(nc)
    await nc.close()
    return processes


async def checkpoint(nc) -> str:  # type: ignore[no-untyped-def]
    rt = await call(nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    return next(m.name for m in rt.requirements.models if m.folder == "checkpoints")


async def register(nc, doubles: dict[str, ComfyUIDouble], slots: int = 1) -> None:  # type: ignore[no-untyped-def]
    for name, double in doubles.items():
        await call(
            nc,
            endpoints.Dispatch.INSTANCES_SAVE,
            SaveInstance(instance=Instance(name=name, base_url=double.url, slots=slots)),
        )
    await asyncio.sleep(1.0)  # one health round: every instance up with its capabilities


async def unregister(nc, names) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        await call(nc, endpoints.Dispatch.INSTANCES_DELETE, DeleteInstance(name=name))


async def submit_and_wait(nc, requests: list[GenerationRequest]) -> tuple[Completions, float]:  # type: ignore[no-untyped-def]
    """Submit every request at once, wait until each job ended: (their completions, when the submitting began)."""
    completions = Completions()
    await nc.subscribe(EVENTS_SUBJECTS, cb=completions.on_event)
    started = time.perf_counter()
    replies = await asyncio.gather(*(call(nc, endpoints.Dispatch.JOBS_SUBMIT, r, timeout=60) for r in requests))
    await completions.wait({r.job_id for r in replies})
    return completions, started


async def finish_run(  # type: ignore[no-untyped-def]
    nc, doubles: dict[str, ComfyUIDouble], processes: list[ServiceProcess], failed: int, what: str
) -> None:
    """Unregister and stop the doubles, stop the hub; a run in which jobs failed ends the script saying so."""
    await unregister(nc, doubles)
    for double in doubles.values():
        await double.stop()
    await nc.close()
    for process in processes:
        await process.stop()
    if failed:
        raise SystemExit(f"{failed} jobs did not complete with {what}")


class Completions:
    """Counts completed/failed events of jobs, from a plain subscription to the event subjects."""

    def __init__(self) -> None:
        self.finished: dict[str, float] = {}
        self.failed: set[str] = set()
        self.changed = asyncio.Event()

    async def on_event(self, msg) -> None:  # type: ignore[no-untyped-def]
        event = msgspec.json.decode(msg.data, type=GenerationEvent)  # one subject per job: the kind is in the payload
        job_id, kind = event.job_id, type(event).__struct_config__.tag
        if kind in ("completed", "failed", "cancelled"):
            self.finished[job_id] = time.perf_counter()
            if kind != "completed":
                self.failed.add(job_id)
            self.changed.set()

    async def wait(self, job_ids: set[str]) -> None:
        while not job_ids <= self.finished.keys():
            self.changed.clear()
            await self.changed.wait()


async def makespan(
    nats_url: str, data: Path, strategy: str, jobs: int, work: float, size: int, slots: int
) -> tuple[float, float, dict]:
    processes = await start_hub(nats_url, data, f"-{strategy}", HUB_DISPATCH_STRATEGY=strategy)
    nc = await nats.connect(nats_url)
    ckpt = await checkpoint(nc)
    doubles = {
        f"{strategy}-{i}-{speed:g}x": ComfyUIDouble(
            name=f"d{i}", speed=speed, work_seconds=work, models={"checkpoints": [ckpt]}
        )
        for i, speed in enumerate(SPEEDS)
    }
    for double in doubles.values():
        await double.start()
    await register(nc, doubles, slots)
    completions, started = await submit_and_wait(
        nc, [GenerationRequest(prompt=f"job {i}", seed=i, width=size, height=size) for i in range(jobs)]
    )
    elapsed = time.perf_counter() - started
    ideal = jobs * work / sum(SPEEDS)
    per_instance = {name: len(d.executed_prompt_ids) for name, d in doubles.items()}
    for name, double in doubles.items():
        spans = double.job_spans
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
        busy = sum(end - start for start, end in spans)
        nominal = len(spans) * work / double.speed
        print(
            f"    {name:<20} jobs {len(spans):3d}  busy {busy:6.2f} s (nominal {nominal:6.2f} s)  "
            f"first start {spans[0][0] - started:5.2f} s  last end {spans[-1][1] - started:6.2f} s  "
            f"gap median {statistics.median(gaps) * 1000 if gaps else 0:5.1f} ms  total gaps {sum(gaps):5.2f} s"
        )
    await finish_run(nc, doubles, processes, len(completions.failed), strategy)
    return elapsed, ideal, per_instance


async def overhead(nats_url: str, data: Path, jobs: int) -> tuple[list[float], list[float]]:
    processes = await start_hub(nats_url, data, "-pull", HUB_DISPATCH_STRATEGY="pull")
    nc = await nats.connect(nats_url)
    ckpt = await checkpoint(nc)
    double = ComfyUIDouble(name="instant", work_seconds=0.0, models={"checkpoints": [ckpt]})
    await double.start()
    await register(nc, {"instant": double})
    completions = Completions()
    await nc.subscribe(EVENTS_SUBJECTS, cb=completions.on_event)

    hub_times: list[float] = []
    direct_times: list[float] = []
    # Alternated, one hub job then one direct run, so a change in the machine's load weighs on both alike.
    async with ComfyClient(double.url) as client:
        for i in range(jobs + 5):
            started = time.perf_counter()
            reply = await call(
                nc, endpoints.Dispatch.JOBS_SUBMIT, GenerationRequest(prompt=f"hub {i}", seed=10_000 + i)
            )
            await completions.wait({reply.job_id})
            hub_time = completions.finished[reply.job_id] - started

            resolved = await call(
                nc,
                endpoints.Registry.RESOLVE,
                ResolveRenderType(render_type="sdxl", params=GenerationParams(prompt=f"direct {i}", seed=20_000 + i)),
            )
            started = time.perf_counter()
            result = await client.run(resolved.workflow, prompt_id=f"direct-{i}-{time.time_ns()}")
            for ref in result.outputs:
                async with client.open_output(ref) as stream:
                    async for _chunk in stream.chunks():
                        pass
            if i >= 5:  # warm-up excluded
                hub_times.append(hub_time)
                direct_times.append(time.perf_counter() - started)

    await unregister(nc, ["instant"])
    await double.stop()
    await nc.close()
    for process in processes:
        await process.stop()
    return hub_times, direct_times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--work", type=float, default=2.0, help="seconds one job takes on a 1x double")
    parser.add_argument("--overhead-jobs", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="image width and height (the doubles encode PNGs)")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2], help="slots per instance, one run each")
    parser.add_argument("--strategies", nargs="+", default=["pull", "round_robin"], choices=["pull", "round_robin"])
    parser.add_argument("--skip-makespan", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats" / "jetstream", log_file=root / "nats.log")
        server.start()
        try:
            if not args.skip_makespan:
                speeds = ", ".join(f"{s:g}x" for s in SPEEDS)
                print(f"burst of {args.jobs} jobs of {args.work:g} s (at 1x) over doubles of speed {speeds}")
                for slots in args.slots:
                    for strategy in args.strategies:
                        elapsed, ideal, per_instance = await makespan(
                            server.url, root / f"{strategy}-{slots}", strategy, args.jobs, args.work, args.size, slots
                        )
                        print(
                            f"  {strategy:<12} slots {slots}  makespan {elapsed:6.2f} s  ideal {ideal:5.2f} s  "
                            f"ratio {elapsed / ideal:4.2f}  jobs per instance {list(per_instance.values())}"
                        )
            hub, direct = await overhead(server.url, root / "overhead", args.overhead_jobs)
            hub_median, direct_median = statistics.median(hub), statistics.median(direct)
            print(f"one job at a time, instant double, {len(hub)} jobs")
            print(
                f"  through the hub  median {hub_median * 1000:6.1f} ms  p90 "
                f"{statistics.quantiles(hub, n=10)[-1] * 1000:6.1f} ms"
            )
            print(
                f"  direct client    median {direct_median * 1000:6.1f} ms  p90 "
                f"{statistics.quantiles(direct, n=10)[-1] * 1000:6.1f} ms"
            )
            print(f"  hub overhead per job (median difference) {(hub_median - direct_median) * 1000:6.1f} ms")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
