"""Hub cost per generation: CPU of every hub process, latency and idle memory, for the NATS, REST and MCP paths.

    .venv/bin/python bench/cost_bench.py [--layout single|split] [--jobs 400] [--concurrency 16]
        [--paths nats,rest,mcp] [--size 512] [--content solid|photo]

Runs the hub as `./hub start` does (`python -m hub_deploy up`: the launcher, its nats-server, its fork server and
the services), in `--layout` (default: what `./hub start` runs, single: every service in one process; split: one
process per service), in a fresh data folder on free ports, with an instant ComfyUI test double in this process
(its CPU is not the hub's). Every generation asks for `--size` x `--size` outputs (default 512x512, the size issue
16's goals are stated for; the default render type's own size is 1024x1024), of one colour (`--content solid`, the
default, as in every earlier figure) or photo-like (`--content photo`: a PNG about as large as a photograph's, saved
as ComfyUI saves it, whose decode for the MCP path's preview costs what a real output's does). Each path runs
`--jobs` generations, `--concurrency` at a time, after a warm-up:
- nats: Dispatch.JOBS_SUBMIT, then the job's events on JetStream until the final one;
- rest: POST /api/v1/generations, then its /events (server-sent events) until the final one;
- mcp: `tools/call generate_image` over Streamable HTTP (official SDK client, an initialised 2025-11-25 session:
  the handshake era most clients speak), which includes the thumbnail;
- mcp-modern (not run unless named): the same call as a self-contained 2026-07-28 request (the SDK client after
  `server/discover`);
- tool, tool-modern (not run unless named): `tools/call preview_prompt` over the same transports, a call that
  generates nothing (one prompt-service hop): what the MCP SDK, the HTTP server and the gateway's doors cost per
  call, the part of the mcp paths' figures that is not the generation's (its "generations/s" are calls/s).
Printed: idle RSS per process after one generation; per path, generations/s, median/p99 latency and the CPU each
hub process (every process below the launcher, and the launcher) spent per generation (utime+stime from
/proc/<pid>/stat, all threads; 10 ms clock ticks, so use hundreds of jobs) and the NATS messages each hub
connection sent and received per generation (nats-server's monitoring /connz: every request, reply, publish,
JetStream ack and delivery counts one). The services run with the production defaults (timings, log level info
unless `--log-level`). Goals of issue 16: CPU ≤ 15 ms per generation summed, MCP median ≤ 100 ms and p99 ≤ 250 ms
at 16 clients, idle memory ≤ 250 MB. `--profile DIR` also samples each Python process with py-spy (install it in
the venv) during each measured run; the sampler's own cost then shows in the CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import json
import urllib.request

import httpx
import msgspec
from _common import LaunchedHub, hub_processes, launched_hub, mcp_calls, mcp_generate, run_concurrently
from doubles.comfyui import PngMaker
from PIL.PngImagePlugin import PngInfo
from preview_bench import photo_like

from contracts import endpoints
from contracts.messages.events import GenerationEvent
from contracts.messages.jobs import FINAL_STATUSES, GenerationRequest
from contracts.runtime.bus import call
from contracts.runtime.config import load_settings
from contracts.streams import event_subject

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# The defaults of the settings the tests shorten (tests/dispatch_support.py DISPATCH_ENV), for the services run by
# the test harness (scale_bench); the launched hub of this bench has them already.
PRODUCTION_TIMINGS = {
    "HUB_DISPATCH_HEALTH_INTERVAL_S": "5",
    "HUB_DISPATCH_STALL_TIMEOUT_S": "60",
    "HUB_DISPATCH_TAKEOVER_S": "30",
}
One = Callable[[int], Awaitable[None]]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


PY_SPY = Path(sys.executable).parent / "py-spy"


def start_profilers(label: str, pids: dict[str, int], folder: Path | None) -> list[subprocess.Popen[bytes]]:
    """py-spy on each Python process of the hub, collapsed stacks to `<folder>/<path>-<process>.txt`."""
    if folder is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(PY_SPY), "record", "--format", "raw", "--rate", "200"]
    return [
        subprocess.Popen(
            [*command, "--pid", str(pid), "-o", str(folder / f"{label}-{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name != "nats-server"
    ]


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for profiler in profilers:
        profiler.wait(30)


def nats_messages(monitor_url: str) -> dict[str, int]:
    """Messages sent plus received so far per named connection of nats-server (a service's connections summed)."""
    with urllib.request.urlopen(f"{monitor_url}/connz?limit=1024", timeout=10) as answer:
        connections = json.load(answer)["connections"]
    counts: dict[str, int] = {}
    for connection in connections:
        name = (connection.get("name") or "bench-client").rsplit("-", 1)[0]  # a service's name ends in -<replica>
        counts[name] = counts.get(name, 0) + connection["in_msgs"] + connection["out_msgs"]
    return counts


def log_lines(path: Path) -> int:
    """Lines the hub's processes have logged so far (the launcher's output file)."""
    with path.open("rb") as log:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))


def cpu_ms_per_job(pids: dict[str, int], before: dict[str, float], jobs: int) -> dict[str, float]:
    """Each process's CPU time since `before` (its cpu_seconds then), in ms per job."""
    return {name: (cpu_seconds(pid) - before[name]) * 1000 / jobs for name, pid in pids.items()}


def print_figures(
    label: str, concurrency: int, elapsed: float, latencies: list[float], spent: dict[str, float], indent: str = ""
) -> None:
    """A load's throughput, median and p99 latency, and the hub's CPU per generation, in all and per process."""
    jobs = len(latencies)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{indent}{label:5s}: {jobs / elapsed:6.1f} generations/s   median {statistics.median(ordered) * 1000:6.1f} ms"
        f"   p99 {p99 * 1000:6.1f} ms   hub CPU {sum(spent.values()):5.1f} ms/generation"
        f"   ({jobs} jobs, {concurrency} at a time)"
    )
    print(f"{indent}       " + "  ".join(f"{name} {ms:.1f}" for name, ms in spent.items()))


async def measure(label: str, pids: dict[str, int], args: argparse.Namespace, one: One) -> None:
    jobs, concurrency = args.jobs, args.concurrency
    await run_concurrently(concurrency, concurrency, one)  # warm-up: connections, caches, first imports
    profilers = start_profilers(label, pids, args.profile)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    messages_before = nats_messages(args.monitor_url)
    log_before = log_lines(args.log_path)
    elapsed, latencies = await run_concurrently(jobs, concurrency, one)
    messages_after = nats_messages(args.monitor_url)
    logged = log_lines(args.log_path) - log_before
    stop_profilers(profilers)
    messages = {name: (n - messages_before.get(name, 0)) / jobs for name, n in sorted(messages_after.items())}
    print_figures(label, concurrency, elapsed, latencies, cpu_ms_per_job(pids, before, jobs))
    print(
        f"       NATS messages per generation {sum(messages.values()):.1f}: "
        + "  ".join(f"{name} {n:.1f}" for name, n in messages.items() if n)
    )
    print(f"       log lines per generation {logged / jobs:.1f} (HUB_LOG_LEVEL={args.log_level})")


def nats_path(gw: LaunchedHub, size: int) -> One:
    async def one(i: int) -> None:
        request = GenerationRequest(prompt=f"bench {i}", steps=1, width=size, height=size)
        reply = await call(gw.nc, endpoints.Dispatch.JOBS_SUBMIT, request, timeout=30)
        sub = await gw.nc.jetstream().subscribe(event_subject(reply.job_id), ordered_consumer=True)
        try:
            while True:
                event = msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=GenerationEvent)
                if type(event).__struct_config__.tag in FINAL_STATUSES:
                    return
        finally:
            await sub.unsubscribe()

    return one


def rest_path(http: httpx.AsyncClient, size: int) -> One:
    async def one(i: int) -> None:
        body = {"prompt": f"bench {i}", "steps": 1, "width": size, "height": size}
        submitted = await http.post("/api/v1/generations", json=body)
        assert submitted.status_code == 202, submitted.text
        final = ""
        async with http.stream("GET", f"{submitted.headers['location']}/events") as events:
            async for line in events.aiter_lines():
                if line.startswith("event:"):
                    final = line.split(":", 1)[1].strip()
        assert final == "completed", final

    return one


async def mcp_path(stack: AsyncExitStack, gw: LaunchedHub, concurrency: int, size: int, era: str) -> One:
    """One MCP client per concurrent caller, each kept for the run (the SDK's transport is on httpx2)."""
    return await mcp_generate(
        stack, gw.base_url, gw.auth, concurrency, "bench", arguments={"width": size, "height": size}, era=era
    )


async def overhead(gw: LaunchedHub, jobs: int, size: int) -> None:
    """Issue 16 goal 5: the time the hub adds to a job over ComfyUI's own execution, one job at a time over NATS:
    from the submit request to the final event (core NATS subscription made before the submit, so no consumer is
    created on the way) minus execution_start -> execution_success as the double reports them (ms timestamps)."""
    reported: dict[str, dict[str, int]] = {}
    comfy = gw.comfy
    original = comfy._job_message

    def noting(job: Any, event: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        original(job, event, data, broadcast=broadcast)
        reported.setdefault(job.item.prompt_id.rsplit("-", 1)[0], {})[event] = job.messages[-1][1]["timestamp"]

    comfy._job_message = noting  # type: ignore[method-assign]
    added: list[float] = []
    totals: list[float] = []
    offsets: dict[str, list[float]] = {}  # milestone -> ms after the submit, per job
    try:
        for i in range(jobs + 3):  # the first 3 warm up
            job_id = f"overhead-{i}-{time.time_ns()}"
            final = asyncio.get_running_loop().create_future()
            stamps: dict[str, float] = {}

            async def on_event(
                msg: Any, final: asyncio.Future[None] = final, stamps: dict[str, float] = stamps
            ) -> None:
                event = msgspec.json.decode(msg.data, type=GenerationEvent)
                tag = str(type(event).__struct_config__.tag)
                stamps.setdefault(tag, event.at)
                if tag in FINAL_STATUSES and not final.done():
                    stamps["received"] = time.time()
                    final.set_result(None)

            sub = await gw.nc.subscribe(event_subject(job_id), cb=on_event)
            submitted_at = time.time()
            started = time.perf_counter()
            request = GenerationRequest(prompt=f"overhead {i}", steps=1, job_id=job_id, width=size, height=size)
            await call(gw.nc, endpoints.Dispatch.JOBS_SUBMIT, request, timeout=30)
            stamps["answered"] = time.time()
            await asyncio.wait_for(final, 30)
            total_ms = (time.perf_counter() - started) * 1000
            await sub.unsubscribe()
            times = reported.get(job_id, {})
            if i >= 3 and "execution_start" in times and "execution_success" in times:
                totals.append(total_ms)
                added.append(total_ms - (times["execution_success"] - times["execution_start"]))
                stamps |= {name: ms / 1000 for name, ms in times.items()}
                for name, at in stamps.items():
                    offsets.setdefault(name, []).append((at - submitted_at) * 1000)
    finally:
        comfy._job_message = original  # type: ignore[method-assign]
    print(
        f"overhead: the hub adds {statistics.median(added):.1f} ms at the median over ComfyUI's reported execution "
        f"(submit to final event {statistics.median(totals):.1f} ms; {len(added)} jobs one at a time, NATS path)"
    )
    milestones = sorted(offsets.items(), key=lambda item: statistics.median(item[1]))
    print("       median ms after the submit: " + "  ".join(f"{n} {statistics.median(v):.1f}" for n, v in milestones))


def photo_png_maker() -> PngMaker:
    """The ComfyUI double's maker of output files for `--content photo`: bench/preview_bench.py's photo-like image,
    saved as ComfyUI's SaveImage saves (compress level 4, the prompt in tEXt chunks), made once per size (with the
    first job's chunks: the hub does not read them) so the double's process spends no CPU on it per job."""
    made: dict[tuple[int, int], bytes] = {}

    def make(width: int, height: int, color: tuple[int, ...], text: dict[str, str] | None = None) -> bytes:
        if (width, height) not in made:
            info = PngInfo()
            for key, value in (text or {}).items():
                info.add_text(key, value)
            out = io.BytesIO()
            image = photo_like(max(width, height)).crop((0, 0, width, height))
            image.save(out, format="PNG", compress_level=4, pnginfo=info)
            made[(width, height)] = out.getvalue()
        return made[(width, height)]

    return make


async def idle_memory(gw: LaunchedHub, pids: dict[str, int], size: int) -> None:
    await nats_path(gw, size)(0)  # one generation, then idle
    await asyncio.sleep(2)
    sizes = {name: rss_mb(pid) for name, pid in pids.items()}
    print(f"idle RSS after one generation: {sum(sizes.values()):.0f} MB over {len(sizes)} processes")
    print("       " + "  ".join(f"{name} {mb:.0f}" for name, mb in sizes.items()))


async def bench(gw: LaunchedHub, args: argparse.Namespace) -> None:
    pids = hub_processes(gw.launcher_pid)
    listed = "  ".join(f"{name} ({pid})" for name, pid in pids.items())
    if args.content == "photo":
        gw.comfy.png_maker = photo_png_maker()
    outputs = f"{args.size}x{args.size} {'photo-like' if args.content == 'photo' else 'one-colour'} outputs"
    print(f"layout {args.layout}, {outputs}: {len(pids)} processes: {listed}")
    await idle_memory(gw, pids, args.size)
    if args.overhead_jobs:
        await overhead(gw, args.overhead_jobs, args.size)
    timeout = httpx.Timeout(30, read=120)
    limits = httpx.Limits(max_connections=2 * args.concurrency)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=timeout, limits=limits)
        )
        paths = {"nats": nats_path(gw, args.size), "rest": rest_path(http, args.size)}
        for label, era in (("mcp", "handshake"), ("mcp-modern", "modern")):
            if label in args.paths:
                paths[label] = await mcp_path(stack, gw, args.concurrency, args.size, era)
        for label, era in (("tool", "handshake"), ("tool-modern", "modern")):
            if label in args.paths:
                paths[label] = await mcp_calls(
                    stack,
                    gw.base_url,
                    gw.auth,
                    args.concurrency,
                    "preview_prompt",
                    lambda i: {"prompt": f"bench {i}"},
                    era=era,
                )
        for label in args.paths:
            await measure(label, pids, args, paths[label])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=["single", "split"], default=load_settings("bench", {}).layout)
    parser.add_argument("--log-level", default=load_settings("bench", {}).log_level, help="HUB_LOG_LEVEL")
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--paths", type=lambda s: s.split(","), default=["nats", "rest", "mcp"])
    parser.add_argument("--size", type=int, default=512, help="width and height of every output (issue 16: 512)")
    parser.add_argument(
        "--content", choices=["solid", "photo"], default="solid", help="what the outputs show: one colour, photo-like"
    )
    parser.add_argument("--overhead-jobs", type=int, default=100, help="jobs one at a time for the added time")
    parser.add_argument("--profile", type=Path, help="folder for py-spy's collapsed stacks of each process")
    args = parser.parse_args()
    if args.profile and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy at {PY_SPY}: python3 -m pip --python {sys.executable} install py-spy")
    with tempfile.TemporaryDirectory(prefix="cost-bench-") as tmp:
        async with launched_hub(args.layout, Path(tmp), HUB_LOG_LEVEL=args.log_level) as gw:
            args.monitor_url, args.log_path = gw.monitor_url, gw.log_path
            await bench(gw, args)


if __name__ == "__main__":
    asyncio.run(main())
