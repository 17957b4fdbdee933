"""Scale with a long queue (issue 16 goal 4): submits, queue places and job views with 10 and with 10,000 jobs
waiting, the dispatcher's memory growth, and 1,000 MCP calls waiting at once.

    .venv/bin/python bench/scale_bench.py [--queued 10000] [--mcp-calls 1000] [--budget 15]

Runs nats-server and the registry, prompt, dispatch, stats and gateway services as processes, with one ComfyUI test
double (2 slots) in this process. Two jobs of an hour take its slots, so every later job waits (no free instance).
Printed:
- submits one at a time (Dispatch.JOBS_SUBMIT over NATS, and REST POST /api/v1/generations) median and p99 while
  the queue is short and once `--queued` wait; and the fill itself (16 at a time: its first and last 200);
- the view of a job near the front and of the last waiting job (Dispatch.JOBS_GET: the place in the whole queue and
  among the key's jobs, the estimated start; and GET /api/v1/generations/{id}), median and p99 of 50 each,
  interleaved, with ~100 and with `--queued` waiting;
- the dispatcher's RSS before and after queueing;
- `--mcp-calls` `tools/call generate_image` at once over raw Streamable HTTP (one MCP session), each held by the
  gateway's budgeted wait (`--budget` s, HUB_GATEWAY_TOOL_BUDGET_S) and answered with its job still waiting:
  errors, answer time, and the gateway's RSS growth (peak while they wait).
Goals of issue 16: submit p99 <= 50 ms at 10,000 queued, queue places and job views as fast as with 10, the
dispatcher growing <= 50 MB; 1,000 MCP calls waiting without an error, the gateway growing <= 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
from _common import hub_on_fresh_nats
from cost_bench import PRODUCTION_TIMINGS, rss_mb
from gateway_support import GatewayHub

from contracts import endpoints
from contracts.messages.jobs import GenerationRequest, GetJob
from contracts.runtime.bus import call

ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "scale", "version": "1"}},
}


def figures(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"


async def timed(calls: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> tuple[list[float], list[Any]]:
    """Run `one(i)` for i in range(calls), `concurrency` at a time; each call's seconds and result, in call order."""
    seconds: list[float] = [0.0] * calls
    results: list[Any] = [None] * calls
    next_index = iter(range(calls))

    async def worker() -> None:
        for i in next_index:
            started = time.perf_counter()
            results[i] = await one(i)
            seconds[i] = time.perf_counter() - started

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seconds, results


async def submit(gw: GatewayHub, i: int) -> str:
    # As the bench's API key, as its REST jobs: under fair share keys take turns, so a job of another key would not
    # wait behind the fill.
    request = GenerationRequest(prompt=f"scale {i}", steps=1, api_key_id=gw.key.key.key_id)
    return (await call(gw.nc, endpoints.Dispatch.JOBS_SUBMIT, request, timeout=60)).job_id


async def views(gw: GatewayHub, http: httpx.AsyncClient, front: str, back: str) -> dict[str, str | int]:
    """JOBS_GET and the REST job view of a job near the front of the queue and of the last one (jobs of the bench's
    API key), 50 times each, interleaved so both meet the same load; and their queue places."""
    places: dict[str, int] = {}
    for job_id in (front, back):
        view = await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
        assert view.status == "queued" and view.queue_position is not None, view
        places[job_id] = view.queue_position
    seconds: dict[str, list[float]] = {"nats front": [], "nats back": [], "rest front": [], "rest back": []}
    for _ in range(50):
        for end, job_id in (("front", front), ("back", back)):
            started = time.perf_counter()
            await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
            seconds[f"nats {end}"].append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = await http.get(f"/api/v1/generations/{job_id}")
            seconds[f"rest {end}"].append(time.perf_counter() - started)
            # Its place is given (under fair share it may move between two reads as the keys' standings do).
            assert answer.status_code == 200 and answer.json()["queue_position"] is not None, answer.text
    return {name: figures(values) for name, values in seconds.items()} | {
        "front place": places[front],
        "back place": places[back],
    }


async def rest_submits(http: httpx.AsyncClient, count: int) -> tuple[str, str, str]:
    """`count` POSTs one at a time: their figures, and the first and the last job's id."""

    async def post(i: int) -> str:
        answer = await http.post("/api/v1/generations", json={"prompt": f"scale rest {i}", "steps": 1})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["job_id"])

    seconds, job_ids = await timed(count, 1, post)
    return figures(seconds), job_ids[0], job_ids[-1]


async def wait_running(gw: GatewayHub, job_ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        statuses = [(await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=j))).status for j in job_ids]
        if all(s == "running" for s in statuses):
            return
        assert time.monotonic() < deadline, statuses
        await asyncio.sleep(0.2)


async def queue_scale(gw: GatewayHub, http: httpx.AsyncClient, args: argparse.Namespace) -> None:
    dispatch_pid = gw.hub.processes["dispatch"].process.pid  # type: ignore[union-attr]
    rss_before = rss_mb(dispatch_pid)
    one_at_a_time, _ = await timed(50, 1, lambda i: submit(gw, i))
    short_post, first_rest, last_rest = await rest_submits(http, 50)
    short = await views(gw, http, first_rest, last_rest)
    print(
        f"{100:>6} waiting: JOBS_SUBMIT {figures(one_at_a_time)}   REST POST {short_post}   "
        f"(one at a time)\n       job view of places {short['front place']} and {short['back place']}: "
        f"JOBS_GET {short['nats front']} / {short['nats back']}   REST {short['rest front']} / {short['rest back']}"
    )
    started = time.perf_counter()
    seconds, _ = await timed(args.queued, 16, lambda i: submit(gw, 100 + i))
    elapsed = time.perf_counter() - started
    print(
        f"submitted {args.queued} jobs over NATS in {elapsed:.0f} s ({args.queued / elapsed:.0f}/s, 16 at a time): "
        f"first 200 {figures(seconds[:200])}   last 200 {figures(seconds[-200:])}"
    )
    await asyncio.sleep(5)  # the events of the fill recorded (stats, webhooks), the background writes settled
    one_at_a_time, _ = await timed(50, 1, lambda i: submit(gw, 20 + i))
    long_post, _, last_rest = await rest_submits(http, 50)
    long = await views(gw, http, first_rest, last_rest)
    long_place = long["back place"]
    print(
        f"{args.queued + 200:>6} waiting: JOBS_SUBMIT {figures(one_at_a_time)}   REST POST {long_post}   "
        f"(one at a time)\n       job view of places {long['front place']} and {long_place}: "
        f"JOBS_GET {long['nats front']} / {long['nats back']}   REST {long['rest front']} / {long['rest back']}"
    )
    await asyncio.sleep(2)  # the background writes after each answer settle
    rss_after = rss_mb(dispatch_pid)
    print(
        f"dispatch RSS {rss_before:.0f} MB with the queue empty, {rss_after:.0f} MB with {long_place} waiting "
        f"(+{rss_after - rss_before:.0f} MB)"
    )


async def mcp_call(http: httpx.AsyncClient, headers: dict[str, str], i: int) -> str:
    """One generate_image over raw Streamable HTTP: "" when it answered with its job, else what went wrong."""
    body = {
        "jsonrpc": "2.0",
        "id": i + 1,
        "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": f"scale mcp {i}", "steps": 1}},
    }
    try:
        answer = await http.post("/mcp", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}"
    lines = [line[5:].strip() for line in answer.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    try:
        message = json.loads(lines[-1]) if lines else answer.json()
    except ValueError:
        return "no JSON-RPC answer"
    if "error" in message:
        return f"JSON-RPC error {message['error'].get('code')}"
    if message["result"].get("isError"):
        return "tool error: " + str(message["result"].get("content"))[:120]
    return ""


async def mcp_waiting(gw: GatewayHub, args: argparse.Namespace) -> None:
    gateway_pid = gw.hub.processes["gateway"].process.pid  # type: ignore[union-attr]
    limits = httpx.Limits(max_connections=args.mcp_calls + 10)
    timeout = httpx.Timeout(args.budget + 120)
    async with httpx.AsyncClient(base_url=gw.base_url, limits=limits, timeout=timeout) as http:
        answer = await http.post("/mcp", json=INIT, headers={**ACCEPT, **gw.auth})
        assert answer.status_code == 200, answer.text
        headers = {**ACCEPT, **gw.auth, "MCP-Protocol-Version": "2025-06-18"}
        if "mcp-session-id" in answer.headers:
            headers["Mcp-Session-Id"] = answer.headers["mcp-session-id"]
        done = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        assert done.status_code == 202, done.text
        await asyncio.sleep(1)
        rss_before = rss_mb(gateway_pid)
        peak = rss_before
        started = time.perf_counter()
        calls = asyncio.gather(*(mcp_call(http, headers, i) for i in range(args.mcp_calls)))
        while not calls.done():
            peak = max(peak, rss_mb(gateway_pid))
            await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - started
        outcomes = calls.result()
    errors = [o for o in outcomes if o]
    print(
        f"{args.mcp_calls} MCP generate_image calls at once, each held up to {args.budget:.0f} s: "
        f"{len(errors)} errors, all answered in {elapsed:.1f} s; gateway RSS {rss_before:.0f} MB before, "
        f"peak {peak:.0f} MB while they waited (+{peak - rss_before:.0f} MB)"
    )
    for error in sorted(set(errors))[:5]:
        print(f"       {errors.count(error)} x {error}")


async def bench(gw: GatewayHub, args: argparse.Namespace) -> None:
    gw.comfy.work_seconds = 3600.0  # the double's two slots stay busy: every later job waits
    busy = [await submit(gw, i) for i in range(2)]
    await wait_running(gw, busy)
    timeout = httpx.Timeout(60)
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=timeout) as http:
        await queue_scale(gw, http, args)
    if args.mcp_calls:
        await mcp_waiting(gw, args)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--mcp-calls", type=int, default=1000)
    parser.add_argument("--budget", type=float, default=15.0, help="HUB_GATEWAY_TOOL_BUDGET_S for the MCP calls")
    args = parser.parse_args()
    hub = hub_on_fresh_nats("scale-bench-", services_env=PRODUCTION_TIMINGS, HUB_GATEWAY_TOOL_BUDGET_S=str(args.budget))
    async with hub as (gw, _server):
        await gw.hub.start("stats").wait_healthy(gw.nc)
        await bench(gw, args)


if __name__ == "__main__":
    asyncio.run(main())
