"""Idle memory of the hub as `./hub start` runs it, after one generation, for each layout in one run.

    .venv/bin/python bench/memory_bench.py [--layouts single,split] [--python PATH] [--jobs 200 --concurrency 16]

For each layout: `python -m hub_deploy up` (what `./hub start` runs) with HUB_LAYOUT set, in a fresh data folder
on free ports; once the banner is printed, a ComfyUI test double (in this process) is added as an instance, one
generation runs through the REST API, the admin UI's sign-in page is fetched, and after a pause the memory of every
process the launcher started (and of the launcher) is read from /proc: RSS (what `ps` shows; shared pages counted
in each process), PSS (shared pages divided among the processes sharing them: the honest total) and USS (pages
only that process holds: what stopping it frees). Issue 16's goal: ≤ 250 MB in all.

With `--jobs`, each layout then also runs that many generations over REST (POST, then its server-sent events to
the final one), `--concurrency` at a time, instant double: generations/s, median and p99 latency, and the CPU every
process of the hub spent per generation (utime+stime from /proc), so the layouts' speed is compared in one run too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx
import nats
from _common import descendants, hub_processes, process_name, run_concurrently, stop_launcher, wait_for_banner
from cost_bench import cpu_ms_per_job, cpu_seconds, print_figures, rest_path
from dispatch_support import add_instance
from doubles.comfyui import ComfyUIDouble
from harness import hub_env

from contracts import endpoints
from contracts.messages.keys import CreateApiKey
from contracts.runtime.bus import call
from hub_deploy.natsserver import free_port

SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"  # what the shipped default render type (sdxl) loads
SETTLE_S = 3.0  # after the generation: let the garbage collector and the allocators settle


@dataclass
class Footprint:
    name: str
    pid: int
    rss_mb: float
    pss_mb: float
    uss_mb: float


def footprint(pid: int) -> Footprint:
    """RSS, PSS and USS of one process, from /proc/<pid>/smaps_rollup (kB)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return Footprint(process_name(pid), pid, fields["Rss"] / 1024, fields["Pss"] / 1024, uss / 1024)


async def one_generation(env: dict[str, str], comfy: ComfyUIDouble) -> str:
    """An instance, an API key, one generation over REST to its end, and the UI's sign-in page; the key's secret."""
    nc = await nats.connect(env["HUB_NATS_URL"])
    try:
        await add_instance(nc, comfy, "bench-comfy")
        key = await call(nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="bench"))
    finally:
        await nc.close()
    gateway = f"http://127.0.0.1:{env['HUB_GATEWAY_PORT']}"
    headers = {"Authorization": f"Bearer {key.secret}"}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=60) as http:
        submitted = await http.post("/api/v1/generations", json={"prompt": "a lighthouse", "steps": 1})
        assert submitted.status_code == 202, submitted.text
        deadline = time.monotonic() + 60
        while (await http.get(submitted.headers["location"])).json()["status"] != "completed":
            assert time.monotonic() < deadline, "the generation did not complete in 60 s"
            await asyncio.sleep(0.2)
        generation = (await http.get(submitted.headers["location"])).json()
        image = await http.get(generation["images"][0]["url"])
        assert image.status_code == 200, image.text
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"http://127.0.0.1:{env['HUB_UI_PORT']}/login")).status_code == 200
    return key.secret


async def load(env: dict[str, str], secret: str, pids: dict[str, int], jobs: int, concurrency: int) -> None:
    """`jobs` generations over REST, `concurrency` at a time: throughput, latency and CPU per generation."""
    gateway = f"http://127.0.0.1:{env['HUB_GATEWAY_PORT']}"
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=2 * concurrency)
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=120, limits=limits) as http:
        generate = rest_path(http)  # one REST generation followed to its final event, as cost_bench sends it
        await run_concurrently(concurrency, concurrency, generate)  # warm-up: connections, caches, first imports
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        elapsed, latencies = await run_concurrently(jobs, concurrency, generate)
    print_figures("REST", concurrency, elapsed, latencies, cpu_ms_per_job(pids, before, jobs), indent="        ")


async def measure(layout: str, root: Path, comfy: ComfyUIDouble, args: argparse.Namespace) -> tuple[float, float]:
    nats_port = free_port()
    env = hub_env(
        f"nats://127.0.0.1:{nats_port}",
        root / layout,
        HUB_NATS_PORT=str(nats_port),
        HUB_LAYOUT=layout,
        HUB_ADMIN_PASSWORD="bench-Pass-1234",
        HUB_LOG_LEVEL="warning",
    )
    log_path = root / f"{layout}.log"
    with log_path.open("wb") as log_file:
        launcher = subprocess.Popen(
            [args.python, "-m", "hub_deploy", "up"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        await asyncio.to_thread(wait_for_banner, log_path, launcher)
        secret = await one_generation(env, comfy)
        await asyncio.sleep(SETTLE_S)
        sizes = [footprint(pid) for pid in descendants(launcher.pid)]
        totals = report(layout, sizes)
        if args.jobs:
            await load(env, secret, hub_processes(launcher.pid), args.jobs, args.concurrency)
            await asyncio.sleep(SETTLE_S)
            after = [footprint(s.pid) for s in sizes]
            print(
                f"        idle after them: RSS {sum(s.rss_mb for s in after):5.0f} MB   "
                + "  ".join(f"{s.name} {s.rss_mb:.0f}" for s in after)
            )
        return totals
    finally:
        stop_launcher(launcher)


def report(layout: str, sizes: list[Footprint]) -> tuple[float, float]:
    rss, pss = sum(s.rss_mb for s in sizes), sum(s.pss_mb for s in sizes)
    print(f"{layout:6s}: {len(sizes)} processes   RSS {rss:5.0f} MB   PSS {pss:5.0f} MB")
    for s in sorted(sizes, key=lambda s: -s.rss_mb):
        print(f"        {s.name:20s} RSS {s.rss_mb:5.0f}   PSS {s.pss_mb:5.0f}   USS {s.uss_mb:5.0f}")
    return rss, pss


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", type=lambda s: s.split(","), default=["single", "split"])
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the Python that runs the hub (default: this one, with the dev tools); e.g. that of a venv made by "
        "`uv sync --locked --no-dev`, as ./hub start makes one on a fresh machine",
    )
    parser.add_argument("--jobs", type=int, default=0, help="then this many generations per layout (default: none)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.pop("HUB_LAYOUT", None)
    totals: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        models = {"checkpoints": [SDXL_CHECKPOINT]}
        async with ComfyUIDouble(name="bench-comfy", models=models, work_seconds=0.0) as comfy:
            for layout in args.layouts:
                totals[layout] = await measure(layout, Path(tmp), comfy, args)
    if len(totals) == 2:
        (a, (a_rss, a_pss)), (b, (b_rss, b_pss)) = totals.items()
        print(f"{a}/{b}: RSS {a_rss / b_rss:.2f}, PSS {a_pss / b_pss:.2f}   (goal: ≤ 250 MB RSS in all)")


if __name__ == "__main__":
    asyncio.run(main())
