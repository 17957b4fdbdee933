"""Pieces the benchmark scripts share (each runs as `python bench/<script>.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test harness starts the hub

import httpx
import httpx2
import nats
from dispatch_support import add_instance, checkpoint_of
from doubles.comfyui import ComfyUIDouble
from gateway_support import UPSCALE_MODEL, GatewayHub, gateway_hub
from harness import hub_env
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.messages.instances import ListInstances
from contracts.messages.keys import CreateApiKey, CreatedApiKey
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer, free_port

One = Callable[[int], Awaitable[None]]


@asynccontextmanager
async def hub_on_fresh_nats(
    prefix: str, *, monitor: bool = False, **gateway_hub_args: Any
) -> AsyncIterator[tuple[GatewayHub, NatsServer]]:
    """A nats-server (with its monitoring port when `monitor`) and the whole hub with its gateway, in a temporary
    folder named `prefix...`, all stopped and removed on exit. Services log warnings only."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        server = NatsServer(
            root / "nats" / "jetstream", log_file=root / "nats.log", monitor_port=free_port() if monitor else 0
        )
        server.start()
        try:
            async with gateway_hub(server.url, root / "data", HUB_LOG_LEVEL="warning", **gateway_hub_args) as gw:
                yield gw, server
        finally:
            server.stop()


async def run_concurrently(
    total: int, concurrency: int, one: One, *, errors: list[str] | None = None
) -> tuple[float, list[float]]:
    """Run `one(i)` for every i < total, `concurrency` at a time: (seconds it all took, each call's latency).
    With `errors`, a failing call is recorded there (and its latency counted) instead of ending the run."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            try:
                await one(i)
            except Exception as exc:
                if errors is None:
                    raise
                errors.append(f"{type(exc).__name__}: {exc}")  # counted, not fatal: the figures say how many
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def mcp_calls(
    stack: AsyncExitStack,
    base_url: str,
    auth: dict[str, str],
    sessions: int,
    tool: str,
    arguments: Callable[[int], dict[str, Any]],
    *,
    timeout_s: float = 30.0,
    check: Callable[[Any], bool] = lambda result: not result.is_error,
    era: str = "handshake",
) -> One:
    """`one(i)`: a `tools/call` of `tool` with `arguments(i)`, whose result must pass `check`, over a pool of
    `sessions` MCP clients (closed with `stack`): `era` "handshake" (an initialised session, 2025-11-25, what most
    clients speak) or "modern" (2026-07-28 after `server/discover`: each call a self-contained POST)."""
    http = await stack.enter_async_context(
        httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(timeout_s, read=120))
    )
    free: asyncio.Queue[ClientSession] = asyncio.Queue()
    for _ in range(sessions):
        read, write = await stack.enter_async_context(streamable_http_client(f"{base_url}/mcp", http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await (session.discover() if era == "modern" else session.initialize())
        free.put_nowait(session)

    async def one(i: int) -> None:
        session = await free.get()
        try:
            result = await session.call_tool(tool, arguments(i))
            assert check(result), result
        finally:
            free.put_nowait(session)

    return one


async def mcp_generate(
    stack: AsyncExitStack,
    base_url: str,
    auth: dict[str, str],
    sessions: int,
    word: str,
    *,
    timeout_s: float = 30.0,
    arguments: dict[str, Any] | None = None,
    era: str = "handshake",
) -> One:
    """`one(i)`: a `generate_image` call (1 step, prompt "<word> i", plus `arguments`) that must complete, over a
    pool of `sessions` initialised MCP sessions (closed with `stack`)."""

    def completed(result: Any) -> bool:
        return not result.is_error and result.structured_content["status"] == "completed"

    return await mcp_calls(
        stack,
        base_url,
        auth,
        sessions,
        "generate_image",
        lambda i: {"prompt": f"{word} {i}", "steps": 1, **(arguments or {})},
        timeout_s=timeout_s,
        check=completed,
        era=era,
    )


def process_name(pid: int) -> str:
    """A readable name of one hub process: a service the fork server started names itself `hub-<service>` (its
    command line is still the fork server's), nats-server, the launcher, or the module run with `-m`."""
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm.startswith("hub-"):
        return comm
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if args[0].endswith(b"nats-server"):
        return "nats-server"
    if b"-m" in args:
        module = args[args.index(b"-m") + 1].decode()
        return {"hub_deploy": "launcher"}.get(module, module)
    return Path(args[0].decode()).name


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        parent = int(rest.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def hub_processes(launcher_pid: int) -> dict[str, int]:
    """Every process of a launched hub (the launcher and all below it) by a readable label, unique: a name two
    processes share gets each one's pid appended, so neither hides the other in a table keyed by label."""
    named = [(process_name(pid), pid) for pid in descendants(launcher_pid)]
    names = [name for name, _ in named]
    return {(name if names.count(name) == 1 else f"{name}#{pid}"): pid for name, pid in named}


def wait_for_banner(log_path: Path, launcher: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while "GenImage Hub is running." not in log_path.read_text(errors="replace"):
        if launcher.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the hub did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)


def stop_launcher(launcher: subprocess.Popen[bytes]) -> None:
    """Stop a launched hub as Ctrl+C does (the launcher stops every service and nats-server), killed after 90 s."""
    launcher.send_signal(signal.SIGINT)
    try:
        launcher.wait(90)
    except subprocess.TimeoutExpired:
        launcher.kill()


@dataclass
class LaunchedHub:
    """A hub as `./hub start` runs it (`python -m hub_deploy up`), with a ComfyUI double and an API key."""

    nc: NatsClient
    comfy: ComfyUIDouble
    base_url: str
    key: CreatedApiKey
    launcher_pid: int
    monitor_url: str
    log_path: Path  # what every hub process writes (the launcher's output)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.secret}"}


@asynccontextmanager
async def launched_hub(layout: str, root: Path, **settings: str) -> AsyncIterator[LaunchedHub]:
    """`python -m hub_deploy up` with HUB_LAYOUT=`layout` (its nats-server's monitoring on), data in `root`, an
    instant ComfyUI double added as an instance of 2 slots and an API key; the launcher stopped (SIGINT) on exit."""
    nats_port, monitor_port = free_port(), free_port()
    env = hub_env(
        f"nats://127.0.0.1:{nats_port}",
        root / "data",
        HUB_NATS_PORT=str(nats_port),
        HUB_NATS_MONITOR_PORT=str(monitor_port),
        HUB_LAYOUT=layout,
        HUB_ADMIN_PASSWORD="bench-Pass-1234",
        **settings,
    )
    log_path = root / "hub.log"
    with log_path.open("wb") as log_file:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "hub_deploy", "up"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        await asyncio.to_thread(wait_for_banner, log_path, launcher)
        nc = await nats.connect(env["HUB_NATS_URL"])
        try:
            models = {"checkpoints": [await checkpoint_of(nc)], "upscale_models": [UPSCALE_MODEL]}
            async with ComfyUIDouble(name="bench-comfy", models=models, work_seconds=0.0) as comfy:
                await add_instance(nc, comfy, "bench-comfy", slots=2)
                await wait_instance_up(nc, "bench-comfy")
                key = await call(nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="bench"))
                base_url = f"http://127.0.0.1:{env['HUB_GATEWAY_PORT']}"
                async with httpx.AsyncClient(base_url=base_url) as http:
                    deadline = time.monotonic() + 30
                    while (await http.get("/readyz")).status_code != 200:
                        assert time.monotonic() < deadline, "the gateway was not ready in 30 s"
                        await asyncio.sleep(0.1)
                monitor_url = f"http://127.0.0.1:{monitor_port}"
                yield LaunchedHub(nc, comfy, base_url, key, launcher.pid, monitor_url, log_path)
        finally:
            await nc.close()
    finally:
        stop_launcher(launcher)


async def wait_instance_up(nc: NatsClient, name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        listing = await call(nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
        if any(v.health.up for v in listing.instances if v.instance.name == name):
            return
        assert time.monotonic() < deadline, listing
        await asyncio.sleep(0.1)
