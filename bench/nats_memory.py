"""nats-server memory under a burst of jobs: what the hub leaves in NATS, and whether it stays bounded.

    .venv/bin/python bench/nats_memory.py [--jobs 2000] [--rounds 1] [--concurrency 8] [--path mcp|rest]

Runs a nats-server (with its HTTP monitoring port), the registry, prompt, dispatch, stats and gateway services as
processes and an instant ComfyUI test double in this process, then runs `--jobs` generations through the gateway
(`mcp`: tools/call generate_image, which follows the job's events; `rest`: POST, then the job's SSE stream until
it ends). Printed before and after: the server's RSS (from /proc) and heap (/varz mem), connections (/connz),
subscriptions (/subsz), and per stream its messages, bytes, subjects, consumers and limits (/jsz). After the
burst it waits `--settle` seconds (the file store drops its block caches after a few seconds of quiet). With
`--rounds`, the burst is repeated and the RSS printed after each: memory that is bounded stops growing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx
from _common import hub_on_fresh_nats, mcp_generate
from gateway_support import GatewayHub

from hub_deploy.natsserver import NatsServer

MiB = 1024 * 1024


def monitor(server: NatsServer, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{server.host}:{server.monitor_port}{path}", timeout=10) as response:
        return json.loads(response.read())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def snapshot(server: NatsServer) -> dict[str, Any]:
    assert server.process is not None
    jsz = monitor(server, "/jsz?streams=1&consumers=1&config=1")
    streams = [s for account in jsz.get("account_details", []) for s in account.get("stream_detail", [])]
    return {
        "rss": rss_bytes(server.process.pid),
        "mem": monitor(server, "/varz")["mem"],
        "connections": monitor(server, "/connz")["num_connections"],
        "subscriptions": monitor(server, "/subsz")["num_subscriptions"],
        "consumers": jsz.get("consumers", 0),
        "streams": {s["name"]: s for s in streams},
    }


def show(label: str, snap: dict[str, Any]) -> None:
    print(
        f"{label}: RSS {snap['rss'] / MiB:6.1f} MiB   /varz mem {snap['mem'] / MiB:6.1f} MiB   "
        f"connections {snap['connections']}   subscriptions {snap['subscriptions']}   consumers {snap['consumers']}"
    )
    for name, stream in sorted(snap["streams"].items()):
        state, config = stream["state"], stream.get("config", {})
        consumers = [c["name"] for c in stream.get("consumer_detail", [])]
        limits = (
            f"max_age {config.get('max_age', 0) / 1e9:g} s, max_bytes {config.get('max_bytes', -1)}, "
            f"max_msgs {config.get('max_msgs', -1)}, per subject {config.get('max_msgs_per_subject', -1)}, "
            f"dup window {config.get('duplicate_window', 0) / 1e9:g} s, discard {config.get('discard', '?')}"
        )
        print(
            f"  {name:22s} {state['messages']:7d} msgs {state['bytes'] / MiB:8.2f} MiB "
            f"{state.get('num_subjects', 0):7d} subjects   consumers {consumers}\n  {'':22s} {limits}"
        )


async def burst_mcp(gw: GatewayHub, jobs: int, concurrency: int) -> None:
    async with AsyncExitStack() as stack:
        one = await mcp_generate(stack, gw.base_url, gw.auth, concurrency, "memory", timeout_s=60)
        await run_all(jobs, concurrency, one)


async def burst_rest(gw: GatewayHub, jobs: int, concurrency: int) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=60) as api:

        async def one(i: int) -> None:
            submitted = await api.post("/api/v1/generations", json={"prompt": f"memory {i}", "steps": 1})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            async with api.stream("GET", f"/api/v1/generations/{job_id}/events") as events:
                async for line in events.aiter_lines():
                    if line.startswith("event:") and line.split(":", 1)[1].strip() in ("completed", "failed"):
                        break
            view = (await api.get(f"/api/v1/generations/{job_id}")).json()
            assert view["status"] == "completed", view

        await run_all(jobs, concurrency, one)


async def run_all(jobs: int, concurrency: int, one: Any) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while not queue.empty():
            await one(queue.get_nowait())
            done += 1
            if done % 500 == 0:
                print(f"  {done} jobs, {done / (time.perf_counter() - started):.1f}/s", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def bench(server: NatsServer, gw: GatewayHub, args: argparse.Namespace) -> None:
    gw.comfy.work_seconds = 0.0
    await gw.hub.start("stats").wait_healthy(gw.nc)
    burst = burst_mcp if args.path == "mcp" else burst_rest
    await burst(gw, args.concurrency, args.concurrency)  # warm-up: every service has made its streams
    before = snapshot(server)
    show("before", before)
    rss = [before["rss"]]
    for round_ in range(1, args.rounds + 1):
        started = time.perf_counter()
        await burst(gw, args.jobs, args.concurrency)
        elapsed = time.perf_counter() - started
        print(f"round {round_}: {args.jobs} jobs over {args.path} in {elapsed:.1f} s ({args.jobs / elapsed:.1f}/s)")
        show(f"after round {round_}", snapshot(server))
        await asyncio.sleep(args.settle)
        after = snapshot(server)
        show(f"round {round_} + {args.settle:g} s quiet", after)
        rss.append(after["rss"])
    total = args.jobs * args.rounds
    grown = (rss[-1] - rss[0]) / MiB
    steps = ", ".join(f"{(b - a) / MiB:+.1f}" for a, b in itertools.pairwise(rss))
    print(f"RSS grew {grown:+.1f} MiB over {total} jobs ({grown * 1024 / max(total, 1):+.1f} KiB a job)")
    print(f"growth by round: {steps} MiB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--path", choices=("mcp", "rest"), default="mcp")
    parser.add_argument("--rounds", type=int, default=1, help="bursts of --jobs, RSS printed after each")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of quiet before the last figures")
    args = parser.parse_args()
    async with hub_on_fresh_nats("nats-memory-", monitor=True) as (gw, server):
        await bench(server, gw, args)


if __name__ == "__main__":
    asyncio.run(main())
