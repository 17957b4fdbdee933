"""Model affinity benchmark: makespan and model switch time of pull_affinity, pull and round_robin in one run.

    .venv/bin/python bench/affinity_bench.py [--jobs 200] [--scale 0.25]

4 ComfyUI doubles of equal speed; 3 render types on different checkpoints, submitted interleaved (a, b, c, a, ...)
as one burst. A job works 2 s and switching a loader node's checkpoint costs 5 s (the doubles simulate it: a loader
whose output is not cached from the previous prompt loads), both multiplied by `--scale` to keep the run short;
the ratios between strategies are what to compare. The dispatcher starts from HUB_DISPATCH_MODEL_SWITCH_S = its
default (10 s) times the same scale, and learns the real cost as it goes. Then the same burst on a single render
type, affinity against plain pull, where affinity must cost nothing.

Everything runs on this machine: a nats-server, the registry, prompt and dispatch services as processes, and the
doubles in this process. Figures are printed; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import nats
from dispatch_bench import finish_run, register, start_hub, submit_and_wait
from dispatch_support import save_render_types
from doubles.comfyui import ComfyUIDouble

from contracts.messages.jobs import GenerationRequest
from hub_deploy.natsserver import NatsServer

INSTANCES = 4
JOB_S, SWITCH_S, DEFAULT_ASSUMED_SWITCH_S = 2.0, 5.0, 10.0
CHECKPOINTS = {"aff-a": "a.safetensors", "aff-b": "b.safetensors", "aff-c": "c.safetensors"}


@dataclass
class Result:
    makespan_s: float
    switch_s: float
    switches: int
    per_instance: list[int]
    idle_s: float  # instance time spent neither running nor loading, between the first start and the last end


async def burst(nats_url: str, data: Path, strategy: str, types: list[str], jobs: int, scale: float) -> Result:
    processes = await start_hub(
        nats_url,
        data,
        HUB_DISPATCH_STRATEGY=strategy,
        HUB_DISPATCH_MODEL_SWITCH_S=f"{DEFAULT_ASSUMED_SWITCH_S * scale:g}",
    )
    nc = await nats.connect(nats_url)
    await save_render_types(nc, CHECKPOINTS)
    doubles = {
        f"{data.name}-{i}": ComfyUIDouble(
            name=f"d{i}",
            work_seconds=JOB_S * scale,
            models={"checkpoints": sorted(CHECKPOINTS.values())},
            model_switch_seconds=SWITCH_S * scale,
        )
        for i in range(INSTANCES)
    }
    for double in doubles.values():
        await double.start()
    await register(nc, doubles)
    completions, started = await submit_and_wait(
        nc,
        [
            GenerationRequest(prompt=f"job {i}", seed=i, width=256, height=256, render_type=types[i % len(types)])
            for i in range(jobs)
        ],
    )
    result = Result(
        makespan_s=time.perf_counter() - started,
        switch_s=sum(seconds for d in doubles.values() for _, seconds in d.model_loads),
        switches=sum(len(d.model_loads) for d in doubles.values()),
        per_instance=[len(d.executed_prompt_ids) for d in doubles.values()],
        idle_s=idle_time([d.job_spans for d in doubles.values()]),
    )
    await finish_run(nc, doubles, processes, len(completions.failed), strategy)
    return result


def idle_time(spans: list[list[tuple[float, float]]]) -> float:
    first = min(s[0][0] for s in spans if s)
    last = max(s[-1][1] for s in spans if s)
    return sum((last - first) - sum(end - start for start, end in s) for s in spans)


def show(label: str, result: Result) -> None:
    print(
        f"  {label:<14} makespan {result.makespan_s:7.2f} s  model loads {result.switches:3d}  "
        f"total switch time {result.switch_s:7.2f} s  instances idle {result.idle_s:6.2f} s  "
        f"jobs per instance {result.per_instance}"
    )


def compare(label: str, affinity: Result, pull: Result) -> None:
    switch_cut = 1 - affinity.switch_s / pull.switch_s if pull.switch_s else 0.0
    makespan_cut = 1 - affinity.makespan_s / pull.makespan_s
    print(f"  {label}: switch time cut by {switch_cut:6.1%}, makespan cut by {makespan_cut:6.1%}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--scale", type=float, default=0.25, help="time scale of job and switch (1 = 2 s and 5 s)")
    args = parser.parse_args()
    scale = args.scale
    with tempfile.TemporaryDirectory(prefix="hub-affinity-bench-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats" / "jetstream", log_file=root / "nats.log")
        server.start()
        try:
            mixed = list(CHECKPOINTS)
            print(
                f"{args.jobs} jobs, {len(mixed)} render types interleaved over {INSTANCES} instances; job "
                f"{JOB_S * scale:g} s, switch {SWITCH_S * scale:g} s (2 s and 5 s scaled by {scale:g})"
            )
            results = {}
            for strategy in ("pull_affinity", "pull", "round_robin"):
                results[strategy] = await burst(
                    server.url, root / f"mixed-{strategy}", strategy, mixed, args.jobs, scale
                )
                show(strategy, results[strategy])
            compare("pull_affinity against pull", results["pull_affinity"], results["pull"])
            print(f"{args.jobs} jobs of a single render type")
            single = {}
            for strategy in ("pull_affinity", "pull"):
                single[strategy] = await burst(
                    server.url, root / f"single-{strategy}", strategy, ["aff-a"], args.jobs, scale
                )
                show(strategy, single[strategy])
            ratio = single["pull_affinity"].makespan_s / single["pull"].makespan_s
            print(f"  single type: pull_affinity makespan / pull makespan = {ratio:5.3f}")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
