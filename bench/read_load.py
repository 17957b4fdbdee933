"""Read-load benchmark: image GETs and SSE followers through the gateway, every byte and event checked.

    .venv/bin/python bench/read_load.py [--gets 10000] [--concurrency 64] [--followers 1000] [--jobs 4]

Runs a nats-server, the registry, prompt, dispatch and gateway services as processes and a ComfyUI test double in
this process (as bench/gateway_bench.py does). Then:
- `--gets` image GETs of stored outputs (sizes from 1 byte to 700 kB), one after another, then the same number
  `--concurrency` at a time; each body's SHA-256 is compared with the stored one;
- `--followers` SSE followers of `--jobs` generations, all connected at once while the jobs run; each follower's
  events (kind and id, in order) are compared with the job's events as stored in the events stream.
Printed per phase: requests/s (events/s for SSE), median/p99 latency and errors (wrong bytes or events, non-2xx,
exceptions). Scale down with smaller numbers for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import statistics
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx
from _common import hub_on_fresh_nats, run_concurrently
from dispatch_support import events_of
from gateway_support import GatewayHub, sse_events

from contracts.runtime.storage import CHUNK_SIZE, ObjectStoreOutputs

SIZES = [1, 1000, 40_000, 300_000, CHUNK_SIZE, CHUNK_SIZE + 1, 700_001]  # up to one chunk (CHUNK_SIZE) and just over it


@dataclass
class Phase:
    label: str
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    unit: str = "requests"

    def report(self, count: int | None = None) -> None:
        done = self.requests if count is None else count
        ordered = sorted(self.latencies) or [0.0]
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        median = statistics.median(ordered)
        print(
            f"{self.label:24s} {done / self.elapsed:9.1f} {self.unit}/s   median {median * 1000:8.1f} ms"
            f"   p99 {p99 * 1000:8.1f} ms   {self.requests} requests, {len(self.errors)} errors"
        )
        for error in self.errors[:5]:
            print(f"    error: {error}")


async def store_outputs(gw: GatewayHub, count: int) -> dict[str, str]:
    """Output id -> SHA-256 of its bytes, for `count` outputs of the SIZES in turn."""
    outputs = ObjectStoreOutputs(gw.nc.jetstream())
    digests: dict[str, str] = {}
    for i in range(count):
        data = os.urandom(SIZES[i % len(SIZES)])
        saved = await outputs.save(io.BytesIO(data), filename=f"o{i}.png", content_type="image/png", job_id="bench")
        digests[saved.output_id] = hashlib.sha256(data).hexdigest()
    return digests


async def timed(phase: Phase, total: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Run `one(i)` for i < total, `concurrency` at a time, recording latencies and errors in `phase`."""
    phase.elapsed, latencies = await run_concurrently(total, concurrency, one, errors=phase.errors)
    phase.latencies.extend(latencies)
    phase.requests += total


async def image_gets(gw: GatewayHub, digests: dict[str, str], total: int, concurrency: int, label: str) -> None:
    ids = list(digests)
    phase = Phase(label)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=gw.base_url, limits=limits, timeout=60) as http:

        async def one(i: int) -> None:
            output_id = ids[i % len(ids)]
            response = await http.get(f"/images/{output_id}")
            if response.status_code != 200:
                raise AssertionError(f"{output_id}: HTTP {response.status_code}")
            if hashlib.sha256(response.content).hexdigest() != digests[output_id]:
                raise AssertionError(f"{output_id}: wrong bytes ({len(response.content)} bytes)")

        await timed(phase, total, concurrency, one)
    phase.report()


async def sse_followers(gw: GatewayHub, followers: int, jobs: int, work_s: float) -> None:
    gw.comfy.work_seconds = work_s
    phase = Phase(f"SSE followers x{followers}", unit="events")
    results: dict[int, list[tuple[str, str]]] = {}
    async with httpx.AsyncClient(base_url=gw.base_url, limits=httpx.Limits(max_connections=None), timeout=300) as http:
        job_ids = []
        for i in range(jobs):
            submitted = await http.post("/api/v1/generations", json={"prompt": f"fox {i}", "steps": 8}, headers=gw.auth)
            submitted.raise_for_status()
            job_ids.append(submitted.json()["job_id"])

        async def one(i: int) -> None:
            results[i] = await sse_events(http, gw, job_ids[i % jobs])

        await timed(phase, followers, followers, one)
    delivered = 0
    for i, job_id in enumerate(job_ids):
        stored = [(type(e).__struct_config__.tag, e.event_id) for e in await events_of(gw.nc, job_id)]
        if not stored or stored[-1][0] != "completed":
            phase.errors.append(f"job {job_id} did not complete: {stored[-1:]}")
        for f in range(i, followers, jobs):
            if f in results:
                delivered += len(results[f])
                if results[f] != stored:
                    phase.errors.append(f"follower {f}: {len(results[f])} events, {len(stored)} stored, not the same")
    phase.report(delivered)
    print(f"{'':24s} {delivered} events to {len(results)} followers of {jobs} jobs in {phase.elapsed:.1f} s")


async def bench(gw: GatewayHub, args: argparse.Namespace) -> None:
    digests = await store_outputs(gw, args.outputs)
    await image_gets(gw, digests, min(200, args.gets), 8, "warm-up")
    await image_gets(gw, digests, args.gets, 1, "image GETs sequential")
    await image_gets(gw, digests, args.gets, args.concurrency, f"image GETs x{args.concurrency}")
    await sse_followers(gw, args.followers, args.jobs, args.work_s)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gets", type=int, default=10_000, help="image GETs per phase")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent image GETs")
    parser.add_argument("--outputs", type=int, default=28, help="distinct stored outputs the GETs cycle through")
    parser.add_argument("--followers", type=int, default=1000, help="concurrent SSE followers")
    parser.add_argument("--jobs", type=int, default=4, help="generations the followers follow")
    parser.add_argument("--work-s", type=float, default=5.0, help="how long the ComfyUI double works on each job")
    args = parser.parse_args()
    async with hub_on_fresh_nats("read-load-") as (gw, _server):
        await bench(gw, args)


if __name__ == "__main__":
    asyncio.run(main())
