"""Gateway benchmark: generations through MCP (/mcp, official SDK client) against the direct NATS path.

    .venv/bin/python bench/gateway_bench.py [--jobs 100] [--concurrency 8]

Runs a nats-server, the registry, prompt, dispatch and gateway services as processes, and instant ComfyUI test
doubles in this process. Each path runs `--jobs` generations, `--concurrency` at a time:
- nats: Dispatch.JOBS_SUBMIT, then wait for the job's final event on JetStream (what the gateway does inside);
- mcp: `tools/call generate_image` over Streamable HTTP, which also builds the inline thumbnail.
Printed: generations/s and median/p99 latency per path; compare the two figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from contextlib import AsyncExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import msgspec
from _common import hub_on_fresh_nats, mcp_generate, run_concurrently
from gateway_support import GatewayHub

from contracts import endpoints
from contracts.messages.events import GenerationEvent
from contracts.messages.jobs import FINAL_STATUSES, GenerationRequest
from contracts.runtime.bus import call
from contracts.streams import event_subject


def report(label: str, jobs: int, elapsed: float, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{label:5s}: {jobs / elapsed:7.1f} generations/s   median {statistics.median(ordered) * 1000:7.1f} ms"
        f"   p99 {p99 * 1000:7.1f} ms   ({jobs} jobs)"
    )


async def bench(gw: GatewayHub, jobs: int, concurrency: int) -> None:
    nc = gw.nc
    gw.comfy.work_seconds = 0.0

    async def via_nats(i: int) -> None:
        reply = await call(
            nc, endpoints.Dispatch.JOBS_SUBMIT, GenerationRequest(prompt=f"bench {i}", steps=1), timeout=30
        )
        sub = await nc.jetstream().subscribe(event_subject(reply.job_id), ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=30)
                event = msgspec.json.decode(msg.data, type=GenerationEvent)
                if type(event).__struct_config__.tag in FINAL_STATUSES:
                    return
        finally:
            await sub.unsubscribe()

    async with AsyncExitStack() as stack:
        via_mcp = await mcp_generate(stack, gw.base_url, gw.auth, concurrency, "bench")
        await run_concurrently(concurrency, concurrency, via_nats)  # warm-up
        await run_concurrently(concurrency, concurrency, via_mcp)
        elapsed, latencies = await run_concurrently(jobs, concurrency, via_nats)
        report("nats", jobs, elapsed, latencies)
        elapsed, latencies = await run_concurrently(jobs, concurrency, via_mcp)
        report("mcp", jobs, elapsed, latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    async with hub_on_fresh_nats("gateway-bench-") as (gw, _server):
        await bench(gw, args.jobs, args.concurrency)


if __name__ == "__main__":
    asyncio.run(main())
