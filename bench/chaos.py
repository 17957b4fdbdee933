"""Chaos rehearsal: the whole hub as `./hub start` runs it, a burst of REST jobs per fault, one fault injected
mid-burst, then every job checked.

    .venv/bin/python bench/chaos.py [--quick] [--jobs 90] [--work 0.3] [--faults registry dispatch ...]

Starts `python -m hub_deploy up` (the launcher) in a temporary data folder on free loopback ports, three ComfyUI
test doubles as their own processes (bench/chaos_double.py, each journaling the prompts it receives and runs),
registers them as instances over NATS and creates an API key. Then, per fault: a burst of `--jobs` generations
over REST (POST /api/v1/generations, `--concurrency` at a time; a refused POST is tried again with the same
Idempotency-Key), the fault
injected once a third of the burst is accepted, every job followed until it ends (at most `--settle-s`), and
checked. Faults: kill -9 of each service (with `--layout single`: of the one process of every service) and of
nats-server (the launcher restarts them), kill -9 of a ComfyUI
double (restarted by the rehearsal after 1 s), and SIGTERM of the whole hub with jobs queued (the rehearsal
starts it again, as a user would).

Printed, per fault, a markdown table:
- accepted: jobs answered 202 (burst and probes); refused: POSTs answered otherwise or not at all, tried again;
  slowest POST s: the longest a POST waited for its answer (or the client's 30 s timeout);
- completed / failed (or cancelled) / stuck (not ended after --settle-s);
- run twice: jobs a ComfyUI double started more than once (from the doubles' journals);
- unannounced: jobs the doubles received that no POST was answered 202 for (the hub accepted a job, then the
  fault cut its answer off, and the client's retry made a second job: its Idempotency-Key should prevent that);
- log rows: jobs whose generation-log row (stats, over NATS) has the job's final status;
- unfetchable: completed jobs with an output that GET /images/<id> does not serve in full;
- restart s: fault -> the replacement runs (a new pid; for the whole hub: its banner);
- flowing s: the restart -> a new job is accepted over REST and a job started after the restart has completed;
- longest stall s: from the restart on, the longest time in which no job completed while an accepted one waited.
Goal: no failed, stuck or unfetchable job; none run twice after a graceful stop; flowing within 3 s of a restart
and no stall over 3 s after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.messages.instances import Instance, ListInstances, SaveInstance
from contracts.messages.keys import CreateApiKey
from contracts.messages.render_types import GetRenderType
from contracts.messages.stats import GetGeneration
from contracts.runtime.bus import call, connect
from contracts.runtime.config import load_settings
from contracts.runtime.logs import configure_logging
from hub_deploy.natsserver import free_port
from hub_deploy.services import SERVICES, wait_healthy

FINAL = ("completed", "failed", "cancelled")
SERVICE_FAULTS = [name for name, _ in SERVICES]
FAULTS = [*SERVICE_FAULTS, "nats-server", "comfyui", "hub-sigterm"]
# HUB_LAYOUT=single runs every service in one process (`python -m hub_deploy.single`): one fault kills them all.
SINGLE_FAULTS = ["hub", "nats-server", "comfyui", "hub-sigterm"]
DOUBLES = ("chaos-a", "chaos-b", "chaos-c")
JOB = {"prompt": "a lighthouse in a storm, chaos rehearsal", "width": 256, "height": 256, "steps": 1}


def wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes], after: int, timeout_s: float) -> None:
    """Until `text` is printed to `path` past byte `after` (the launcher's banner, a double's readiness line)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_bytes()[after:].decode(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}; see {path}")
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not printed to {path} after {timeout_s:g} s")


def children_of(pid: int) -> dict[str, int]:
    """The launcher's children by name (service names as in SERVICES, and 'nats-server'), from /proc."""
    modules = {module: name for name, module in SERVICES} | {"hub_deploy.single": "hub"}
    found: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != pid:
                continue
            args = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
            forked = (stat.parent / "comm").read_text().strip().removeprefix("hub-")  # named by the fork server
            if args[0].endswith("nats-server"):
                found["nats-server"] = int(stat.parent.name)
            elif forked in modules.values():
                found[forked] = int(stat.parent.name)
            elif "-m" in args and args[args.index("-m") + 1] in modules:
                found[modules[args[args.index("-m") + 1]]] = int(stat.parent.name)
    return found


@dataclass
class Launcher:
    """`python -m hub_deploy up`, as `./hub start` runs it, its output in a log file."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float) -> None:
        after = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub_deploy", "up"], env=self.env, stdout=log_file, stderr=subprocess.STDOUT
            )
        wait_for_line(self.log_path, "GenImage Hub is running.", self.process, after, timeout_s)

    def children(self) -> dict[str, int]:
        assert self.process is not None
        return children_of(self.process.pid)

    def wait_replaced(self, name: str, pid: int, timeout_s: float) -> None:
        """Until the launcher runs a new process for `name` (it restarts one that died)."""
        deadline = time.monotonic() + timeout_s
        while self.children().get(name, pid) == pid:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the launcher did not restart {name} within {timeout_s:g} s")
            time.sleep(0.02)

    def stop(self, timeout_s: float) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@dataclass
class Double:
    """One ComfyUI double in its own process, on a fixed port so a restarted one is the same instance."""

    name: str
    port: int
    root: Path
    work_s: float
    models: dict[str, list[str]]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def journal(self) -> Path:
        return self.root / f"{self.name}.jsonl"

    def start(self) -> None:
        log_path = self.root / f"{self.name}.log"
        after = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, str(ROOT / "bench" / "chaos_double.py"), "--name", self.name]
        command += ["--port", str(self.port), "--work-seconds", str(self.work_s), "--journal", str(self.journal)]
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [*command, "--models", json.dumps(self.models)], stdout=log_file, stderr=subprocess.STDOUT
            )
        wait_for_line(log_path, "listening on", self.process, after, 30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def journaled(doubles: list[Double], event: str) -> Counter[str]:
    """How often the doubles received or started (`event`) each job (prompt ids are `<job_id>-<attempt>`)."""
    runs: Counter[str] = Counter()
    for double in doubles:
        if double.journal.exists():
            for line in double.journal.read_text().splitlines():
                entry = json.loads(line)
                if entry["event"] == event:
                    runs[str(entry["prompt_id"]).rsplit("-", 1)[0]] += 1
    return runs


@dataclass
class Round:
    """What one fault's burst saw."""

    fault: str
    jobs: list[str] = field(default_factory=list)
    accepted_at: dict[str, float] = field(default_factory=dict)
    completed_at: dict[str, float] = field(default_factory=dict)  # the jobs' finished_at (wall clock)
    started_at: dict[str, float] = field(default_factory=dict)  # when the attempt that completed it started
    refused: int = 0
    slowest_post_s: float = 0.0
    fault_at: float = 0.0
    restart_s: float | None = None
    accepted_again_at: float | None = None
    final: dict[str, dict] = field(default_factory=dict)

    @property
    def flowing_s(self) -> float | None:
        # Jobs started after the restart: one that merely finished across the fault says nothing of the flow.
        completed_after = [t for job, t in self.completed_at.items() if self.started_at[job] > self.fault_at]
        if self.accepted_again_at is None or not completed_after:
            return None
        return max(self.accepted_again_at, min(completed_after)) - self.fault_at

    @property
    def stall_s(self) -> float:
        """The longest time, from the restart on, in which no job completed although an accepted job waited."""
        times = [self.fault_at, *sorted(t for t in self.completed_at.values() if t > self.fault_at)]
        longest = 0.0
        for start, end in itertools.pairwise(times):
            waiting = any(
                self.accepted_at[job] <= start and self.completed_at.get(job, float("inf")) >= end for job in self.jobs
            )
            longest = max(longest, end - start) if waiting else longest
        return longest


class Rehearsal:
    """The hub, its doubles, a REST client with an API key and a NATS connection of its own."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        nats_port, gateway_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(
            HUB_DATA_DIR=str(root / "data"),
            HUB_NATS_PORT=str(nats_port),
            HUB_NATS_URL=f"nats://127.0.0.1:{nats_port}",
            HUB_GATEWAY_PORT=str(gateway_port),
            HUB_UI_PORT=str(free_port()),
            HUB_LOG_FORMAT="json",
            HUB_LAYOUT=args.layout,
            HUB_FORK_SERVER=args.fork_server,
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.launcher = Launcher(env, root / "launcher.log")
        self.base_url = f"http://127.0.0.1:{gateway_port}"
        self.doubles: list[Double] = []
        self.nc: NatsClient | None = None
        self.http: httpx.AsyncClient | None = None
        self.announced: set[str] = set()  # every job a POST was answered 202 for
        self.unannounced: set[str] = set()  # jobs the doubles ran that no 202 told of

    async def start(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.launcher.start, 120)
        quiet = load_settings("launcher", {**self.env, "HUB_LOG_LEVEL": "error"})
        configure_logging(quiet)  # our own connection's reconnect warnings are expected here
        self.nc = await connect(quiet, "chaos-rehearsal")
        rt = await call(self.nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
        models = {"checkpoints": [next(m.name for m in rt.requirements.models if m.folder == "checkpoints")]}
        for name in DOUBLES:
            double = Double(name, free_port(), self.root, self.args.work, models)
            await asyncio.to_thread(double.start)
            self.doubles.append(double)
            instance = Instance(name=name, base_url=double.url, slots=1)
            await call(self.nc, endpoints.Dispatch.INSTANCES_SAVE, SaveInstance(instance=instance))
        key = await call(self.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="chaos"))
        headers = {"Authorization": f"Bearer {key.secret}"}
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(30))
        await self.wait_whole(60)
        print(f"hub up with {len(DOUBLES)} doubles in {time.monotonic() - started:.1f} s ({self.root})", flush=True)

    async def wait_whole(self, timeout_s: float) -> None:
        """Every service healthy and every double up as an instance: the state each round starts from."""
        assert self.nc is not None
        for name, _ in SERVICES:
            await wait_healthy(self.nc, name, timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                listing = await call(self.nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
                if sum(v.health.up for v in listing.instances if v.instance.name in DOUBLES) == len(DOUBLES):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ComfyUI doubles are not all up after {timeout_s:g} s")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        await asyncio.to_thread(self.launcher.stop, 60)
        for double in self.doubles:
            double.stop()

    # ---------------------------------------------------------------- one round: burst, fault, settle, check

    async def submit(self, rnd: Round, deadline: float) -> None:
        """One job over REST; a POST refused or unanswered (the hub restarting) is tried again until `deadline`."""
        assert self.http is not None
        key = {"Idempotency-Key": str(uuid.uuid4())}  # one per job: a retry after a cut-off answer makes no second job
        while time.monotonic() < deadline:
            posted = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                answer = await self.http.post("/api/v1/generations", json=JOB, headers=key)
                rnd.slowest_post_s = max(rnd.slowest_post_s, time.monotonic() - posted)
                if answer.status_code == 202:
                    rnd.jobs.append(answer.json()["job_id"])
                    rnd.accepted_at[rnd.jobs[-1]] = time.time()
                    return
            rnd.slowest_post_s = max(rnd.slowest_post_s, time.monotonic() - posted)
            rnd.refused += 1
            await asyncio.sleep(0.2)

    async def burst(self, rnd: Round, fault_after: int) -> None:
        deadline = time.monotonic() + self.args.settle_s
        todo = list(range(self.args.jobs))
        fault: asyncio.Task[None] | None = None

        async def worker() -> None:
            nonlocal fault
            while todo:
                todo.pop()
                await self.submit(rnd, deadline)
                if fault is None and len(rnd.jobs) >= fault_after:
                    fault = asyncio.create_task(self.inject(rnd))

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        if fault is None:
            fault = asyncio.create_task(self.inject(rnd))
        await fault

    async def inject(self, rnd: Round) -> None:
        """The fault, then the restart (by the launcher or by us), then a probe job accepted after it."""
        rnd.fault_at = time.time()
        if rnd.fault == "comfyui":
            self.doubles[0].kill()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.doubles[0].start)
        elif rnd.fault == "hub-sigterm":
            await asyncio.to_thread(self.launcher.stop, 120)
            await asyncio.to_thread(self.launcher.start, 120)
        else:
            before = self.launcher.children()[rnd.fault]
            os.kill(before, signal.SIGKILL)
            await asyncio.to_thread(self.launcher.wait_replaced, rnd.fault, before, self.args.settle_s)
        restarted = time.time()
        rnd.restart_s = restarted - rnd.fault_at
        rnd.fault_at = restarted  # flowing is counted from the restart on
        await self.submit(rnd, time.monotonic() + self.args.settle_s)
        rnd.accepted_again_at = time.time()

    async def settle(self, rnd: Round) -> None:
        """Follow every job over REST until it ends, at most --settle-s."""
        assert self.http is not None
        deadline = time.monotonic() + self.args.settle_s
        gate = asyncio.Semaphore(self.args.concurrency)

        async def look(job_id: str) -> None:
            async with gate:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = await self.http.get(f"/api/v1/generations/{job_id}")  # type: ignore[union-attr]
                    job = answer.json() if answer.status_code == 200 else {}
                    if job.get("status") in FINAL:
                        rnd.final[job_id] = job
                        if job["status"] == "completed":
                            rnd.completed_at[job_id] = job["timings"]["finished_at"]
                            rnd.started_at[job_id] = job["timings"]["started_at"]

        while time.monotonic() < deadline:
            pending = [j for j in rnd.jobs if j not in rnd.final]
            if not pending:
                return
            await asyncio.gather(*(look(j) for j in pending))
            await asyncio.sleep(0.5)

    async def log_rows(self, rnd: Round) -> int:
        """Jobs whose generation-log row has their final status (the stats service may lag a moment)."""
        assert self.nc is not None
        matching: set[str] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for job_id, job in rnd.final.items():
                if job_id in matching:
                    continue
                with contextlib.suppress(Exception):
                    row = await call(self.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id=job_id))
                    if row.status == job["status"]:
                        matching.add(job_id)
            if len(matching) == len(rnd.final):
                break
            await asyncio.sleep(0.5)
        return len(matching)

    async def unfetchable(self, rnd: Round) -> int:
        """Completed jobs with no output, or one that GET /images/<id> does not serve in full."""
        assert self.http is not None
        bad = 0
        for job in rnd.final.values():
            if job["status"] != "completed":
                continue
            images = job.get("images") or []
            ok = bool(images)
            for image in images:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await self.http.get(image["url"])
                    ok = ok and answer.status_code == 200 and len(answer.content) == image["size"]
                    continue
                ok = False
            bad += not ok
        return bad

    async def run_round(self, fault: str) -> dict[str, object]:
        await self.wait_whole(90)
        rnd = Round(fault)
        fault_after = self.args.jobs if fault == "hub-sigterm" else max(1, self.args.jobs // 3)
        await self.burst(rnd, fault_after)
        await self.settle(rnd)
        await self.wait_whole(90)  # the checks ask the recovered hub (a restarted stats service catching up)
        statuses = Counter(job["status"] for job in rnd.final.values())
        runs = journaled(self.doubles, "executed")
        self.announced.update(rnd.jobs)
        unannounced = set(journaled(self.doubles, "received")) - self.announced - self.unannounced
        self.unannounced |= unannounced
        return {
            "fault": FAULT_LABELS[fault],
            "accepted": len(rnd.jobs),
            "refused": rnd.refused,
            "completed": statuses["completed"],
            "failed": statuses["failed"] + statuses["cancelled"],
            "stuck": len(rnd.jobs) - len(rnd.final),
            "run twice": sum(runs[j] > 1 for j in rnd.jobs),
            "unannounced": len(unannounced),
            "log rows": await self.log_rows(rnd),
            "unfetchable": await self.unfetchable(rnd),
            "slowest POST s": rnd.slowest_post_s,
            "restart s": rnd.restart_s,
            "flowing s": rnd.flowing_s,
            "longest stall s": rnd.stall_s,
        }


FAULT_LABELS = {
    **{name: f"kill -9 {name}" for name in SERVICE_FAULTS},
    "hub": "kill -9 the hub (single layout)",
    "nats-server": "kill -9 nats-server",
    "comfyui": "kill -9 a ComfyUI double",
    "hub-sigterm": "SIGTERM the hub, jobs queued",
}


def cell(value: object) -> str:
    if value is None:
        return "never"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, object]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(cell(row[h]) for h in head) + " |" for row in rows]
    return "\n".join(lines)


def misses(row: dict[str, object]) -> list[str]:
    """Where a row falls short of the goal."""
    found = [f"{row[k]} {k}" for k in ("failed", "stuck", "unfetchable") if row[k]]
    if row["log rows"] != row["accepted"]:
        found.append(f"{row['log rows']} log rows for {row['accepted']} jobs")
    if row["fault"] == FAULT_LABELS["hub-sigterm"] and row["run twice"]:
        found.append(f"{row['run twice']} run twice after a graceful stop")
    flowing = row["flowing s"]
    if not isinstance(flowing, float) or flowing > 3.0:
        found.append(f"flowing again after {cell(flowing)} s")
    stall = row["longest stall s"]
    if isinstance(stall, float) and stall > 3.0:
        found.append(f"no job completed for {stall:.1f} s while jobs waited")
    return found


async def rehearse(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="hub-chaos-"))
    hub = Rehearsal(root, args)
    rows: list[dict[str, object]] = []
    try:
        await hub.start()
        for fault in args.faults:
            started = time.monotonic()
            rows.append(await hub.run_round(fault))
            print(f"{FAULT_LABELS[fault]}: round took {time.monotonic() - started:.1f} s", flush=True)
    finally:
        await hub.close()
    print(f"\n{args.jobs} jobs per burst of {args.work:g} s each over {len(DOUBLES)} doubles, 1 slot each\n")
    print(table(rows))
    short = [f"{row['fault']}: {', '.join(misses(row))}" for row in rows if misses(row)]
    print("\n" + ("\n".join(short) if short else "goal met on every fault"))
    if short:
        print(f"logs: {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 jobs of 0.2 s per fault (a few minutes in all)")
    parser.add_argument("--jobs", type=int, default=90, help="jobs per burst (default 90)")
    parser.add_argument("--work", type=float, default=0.3, help="seconds one job takes on a double (default 0.3)")
    parser.add_argument("--concurrency", type=int, default=6, help="REST calls at a time (default 6)")
    parser.add_argument("--settle-s", type=float, default=120.0, help="longest wait for a round's jobs to end")
    parser.add_argument(
        "--layout",
        choices=["split", "single"],
        default="split",
        help="HUB_LAYOUT of the hub: split (default) kills each service's own process, single the one process of all",
    )
    parser.add_argument(
        "--fork-server",
        choices=["auto", "on", "off"],
        default="auto",
        help="HUB_FORK_SERVER of the hub (the caller's HUB_* variables never reach it; default auto, as ./hub start)",
    )
    parser.add_argument("--faults", nargs="+", choices=[*FAULTS, "hub"], help="the faults, in order (default: all)")
    args = parser.parse_args()
    layout_faults = SINGLE_FAULTS if args.layout == "single" else FAULTS
    args.faults = args.faults or layout_faults
    if set(args.faults) - set(layout_faults):
        parser.error(f"--faults: with --layout {args.layout} choose among {', '.join(layout_faults)}")
    if args.quick:
        args.jobs, args.work, args.settle_s = 24, 0.2, 60.0
    raise SystemExit(asyncio.run(rehearse(args)))


if __name__ == "__main__":
    main()
