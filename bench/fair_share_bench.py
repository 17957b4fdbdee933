"""Fair share benchmark: how long a small key waits behind another key's burst, fair share against oldest-first.

    .venv/bin/python bench/fair_share_bench.py [--a-jobs 300] [--b-jobs 10] [--scale 0.25]

4 ComfyUI doubles of equal speed, one slot each. Key A submits `--a-jobs` jobs at once; once they are all accepted
and half a job-time has passed ("one second later" at 2 s jobs), key B submits `--b-jobs`. A job works 2 s times
`--scale`. The same burst runs with HUB_DISPATCH_FAIR_SHARE=on and =off (oldest job first), under `pull`, and with
fair share under `pull_affinity`; each on fresh services, one nats-server for all. Printed, in job-times (one job's
run time): B's queue wait (submitted to started) median and max, and when B's last job finished after B submitted.

B's fair share: with two keys of equal weight waiting, B gets half the instances, so its jobs would all be done
after b_jobs / (instances / 2) job-times; the goal is to finish within about 2 job-times of that.

Everything runs on this machine: a nats-server, the registry, prompt and dispatch services as processes, and the
doubles in this process. Compare the figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import msgspec
import nats
from dispatch_bench import checkpoint, finish_run, register, start_hub
from doubles.comfyui import ComfyUIDouble

from contracts import endpoints
from contracts.messages.events import GenerationEvent
from contracts.messages.jobs import GenerationRequest
from contracts.runtime.bus import call
from contracts.streams import EVENTS_SUBJECTS
from hub_deploy.natsserver import NatsServer

INSTANCES = 4
JOB_S = 2.0


@dataclass
class Timeline:
    """When each job started and ended, from a plain subscription to the event subjects."""

    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_event(self, msg) -> None:  # type: ignore[no-untyped-def]
        event = msgspec.json.decode(msg.data, type=GenerationEvent)
        kind = type(event).__struct_config__.tag
        if kind == "started":
            self.started.setdefault(event.job_id, time.perf_counter())
        elif kind in ("completed", "failed", "cancelled"):
            self.finished[event.job_id] = time.perf_counter()
            if kind != "completed":
                self.failed.add(event.job_id)
            self.changed.set()

    async def wait(self, job_ids: set[str]) -> None:
        while not job_ids <= self.finished.keys():
            self.changed.clear()
            await self.changed.wait()


@dataclass
class Result:
    b_waits: list[float]  # job-times from B's submit to each B job's start
    b_done: float  # job-times from B's submit until B's last job finished
    makespan: float  # job-times from A's submit until every job finished


async def submit_all(nc: nats.NATS, key: str, count: int) -> list[str]:
    replies = await asyncio.gather(
        *(
            call(
                nc,
                endpoints.Dispatch.JOBS_SUBMIT,
                GenerationRequest(prompt=f"{key} {i}", seed=i, width=256, height=256, api_key_id=key),
                timeout=120,
            )
            for i in range(count)
        )
    )
    return [reply.job_id for reply in replies]


async def burst(nats_url: str, data: Path, strategy: str, fair: str, args: argparse.Namespace) -> Result:
    job_s = JOB_S * args.scale
    processes = await start_hub(nats_url, data, HUB_DISPATCH_STRATEGY=strategy, HUB_DISPATCH_FAIR_SHARE=fair)
    nc = await nats.connect(nats_url)
    ckpt = await checkpoint(nc)
    doubles = {
        f"{data.name}-{i}": ComfyUIDouble(name=f"d{i}", work_seconds=job_s, models={"checkpoints": [ckpt]})
        for i in range(INSTANCES)
    }
    for double in doubles.values():
        await double.start()
    await register(nc, doubles)
    timeline = Timeline()
    await nc.subscribe(EVENTS_SUBJECTS, cb=timeline.on_event)
    began = time.perf_counter()
    a_jobs = await submit_all(nc, f"key_{data.name}_a", args.a_jobs)
    await asyncio.sleep(job_s / 2)
    b_submitted = time.perf_counter()
    b_jobs = await submit_all(nc, f"key_{data.name}_b", args.b_jobs)
    await timeline.wait({*a_jobs, *b_jobs})
    result = Result(
        b_waits=[(timeline.started[j] - b_submitted) / job_s for j in b_jobs],
        b_done=(max(timeline.finished[j] for j in b_jobs) - b_submitted) / job_s,
        makespan=(max(timeline.finished.values()) - began) / job_s,
    )
    await finish_run(nc, doubles, processes, len(timeline.failed), f"{strategy}, fair share {fair}")
    return result


def show(label: str, result: Result) -> None:
    print(
        f"  {label:<26} B wait median {statistics.median(result.b_waits):6.1f}  max {max(result.b_waits):6.1f}  "
        f"B done after {result.b_done:6.1f}  all done after {result.makespan:6.1f}  (job-times)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-jobs", type=int, default=300)
    parser.add_argument("--b-jobs", type=int, default=10)
    parser.add_argument("--scale", type=float, default=0.25, help="time scale of a job (1 = 2 s)")
    args = parser.parse_args()
    fair_share = args.b_jobs / (INSTANCES / 2)
    with tempfile.TemporaryDirectory(prefix="hub-fair-share-bench-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats" / "jetstream", log_file=root / "nats.log")
        server.start()
        try:
            print(
                f"key A {args.a_jobs} jobs, then key B {args.b_jobs} jobs half a job-time later; {INSTANCES} "
                f"instances; job {JOB_S * args.scale:g} s (2 s scaled by {args.scale:g}). B's fair share: done "
                f"after {fair_share:g} job-times; goal: within ~2 more."
            )
            for label, strategy, fair in (
                ("pull, fair share", "pull", "on"),
                ("pull, oldest first", "pull", "off"),
                ("pull_affinity, fair share", "pull_affinity", "on"),
            ):
                result = await burst(server.url, root / f"{strategy}-{fair}", strategy, fair, args)
                show(label, result)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
