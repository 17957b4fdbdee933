"""`python -m hub_deploy up`: the whole hub on one machine.

Starts a local nats-server with JetStream (data under HUB_DATA_DIR/nats), then every service: all in one
process (HUB_LAYOUT=single, `python -m hub_deploy.single`) or each as its own process (HUB_LAYOUT=split), waits
until each answers its health request over NATS, prints where to go, restarts a service process
or nats-server that crashes (nats-server on the same port and data folder, so the services reconnect and
the jobs in its streams are kept), and on Ctrl-C (or SIGTERM) stops the services gracefully, then NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

import msgspec

from contracts.runtime.bus import connect
from contracts.runtime.config import Settings
from contracts.runtime.logs import get_logger
from hub_deploy.forkserver import ForkedProcess, ForkServer
from hub_deploy.natsserver import NatsServer
from hub_deploy.services import SERVICES, wait_healthy

log = get_logger("launcher")

RESTART_WINDOW_S = 60.0
MAX_RESTARTS_IN_WINDOW = 5
NATS_WATCH_EVERY_S = 0.2


class RestartBudget:
    """At most MAX_RESTARTS_IN_WINDOW restarts a minute: the first at once (a crash is rare; every second of it the
    hub is down), the next ones after a growing pause (0.5 s, 1 s, 2 s ... 10 s) in case it keeps crashing."""

    def __init__(self) -> None:
        self.restarts: list[float] = []

    def may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        self.restarts.append(now)
        return len(self.restarts) <= MAX_RESTARTS_IN_WINDOW

    @property
    def pause_s(self) -> float:
        if len(self.restarts) <= 1:
            return 0.0
        return min(2 ** (len(self.restarts) - 2) * 0.5, 10)


class ServiceProcess(RestartBudget):
    """One service child process, restarted with back-off when it dies on its own: forked from the fork server
    where there is one (its modules already imported), else started with `python -m`."""

    def __init__(self, name: str, module: str, env: dict[str, str], forks: ForkServer | None = None) -> None:
        super().__init__()
        self.name = name
        self.module = module
        self.env = env
        self.forks = forks
        self.process: asyncio.subprocess.Process | ForkedProcess | None = None

    async def start(self) -> None:
        if self.forks is not None:
            self.process = await self.forks.spawn(self.name, self.module)
        else:
            self.process = await asyncio.create_subprocess_exec(sys.executable, "-m", self.module, env=self.env)
        log.info("service process started", target=self.name, pid=self.process.pid, forked=self.forks is not None)

    async def stop(self, timeout_s: float) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            log.warning("service did not stop in time; killing it", target=self.name)
            self.process.kill()
            return await self.process.wait()


def service_processes(settings: Settings, env: dict[str, str], forks: ForkServer | None) -> list[ServiceProcess]:
    """The processes that run the services, in start order, for the layout HUB_LAYOUT names."""
    if settings.layout == "single":
        return [ServiceProcess("hub", "hub_deploy.single", env, forks)]
    return [ServiceProcess(name, module, env, forks) for name, module in SERVICES]


def child_environment(settings: Settings, nats_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["HUB_NATS_URL"] = nats_url
    env["HUB_DATA_DIR"] = str(settings.data_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if env.pop("PYTHONDONTWRITEBYTECODE", ""):
        # Without bytecode a restarted service compiles every module it imports again (3x the CPU of its start:
        # seconds on a loaded machine, while it is down). Kept under the data folder instead, so nothing is
        # written beside the sources, which is what PYTHONDONTWRITEBYTECODE asks for.
        env.setdefault("PYTHONPYCACHEPREFIX", str(settings.data_dir / "pycache"))
    return env


def banner(settings: Settings, nats_url: str) -> str:
    return "\n".join(
        [
            "",
            "GenImage Hub is running.",
            f"  Admin UI   http://{settings.ui_host}:{settings.ui_port}/",
            f"  MCP        http://{settings.gateway_host}:{settings.gateway_port}/mcp  (Bearer API key from the UI)",
            f"  REST API   http://{settings.gateway_host}:{settings.gateway_port}/api/v1  "
            f"(OpenAPI: /api/v1/openapi.json)",
            f"  NATS       {nats_url}",
            f"  Data       {settings.data_dir}",
            "Press Ctrl-C to stop.",
            "",
        ]
    )


def ports_in_the_way(settings: Settings) -> list[str]:
    """Why the hub could not listen where it is told to: a port another program holds, or one port given twice.
    (Checked before anything starts: otherwise a service fails to listen and the hub waits for it in vain.)"""
    wanted = [
        ("HUB_NATS_PORT", "127.0.0.1", settings.nats_port),
        ("HUB_NATS_MONITOR_PORT", "127.0.0.1", settings.nats_monitor_port),
        ("HUB_GATEWAY_PORT", settings.gateway_host, settings.gateway_port),
        ("HUB_UI_PORT", settings.ui_host, settings.ui_port),
    ]
    problems: list[str] = []
    taken_by: dict[int, str] = {}
    for variable, host, port in wanted:
        if port == 0:  # any free port, or off
            continue
        if port in taken_by:
            problems.append(f"{variable} and {taken_by[port]} are both {port}: give each its own port")
            continue
        taken_by[port] = variable
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                probe.bind(address)
        except OSError as exc:
            problems.append(
                f"{host}:{port} ({variable}) cannot be used ({exc.strerror or exc}): stop what listens there "
                f"or set {variable} to another port"
            )
    return problems


async def run_hub(settings: Settings, *, start_timeout_s: float = 60.0) -> int:
    problems = ports_in_the_way(settings)
    if problems:
        for problem in problems:
            log.error("the hub cannot start", problem=problem)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(
        settings.data_dir / "nats" / "jetstream",
        port=settings.nats_port,
        monitor_port=settings.nats_monitor_port,
        log_file=settings.data_dir / "nats" / "nats-server.log",
    )
    nats.start()
    log.info("nats-server started", url=nats.url, store=str(nats.store_dir), pid=nats.process and nats.process.pid)
    env = child_environment(settings, nats.url)
    forks = ForkServer.for_this_launcher(env) if settings.fork_server else None
    children = service_processes(settings, env, forks)
    nc = None
    exit_code = 0
    try:
        nc = await connect(msgspec.structs.replace(settings, nats_url=nats.url), "hub-launcher")
        for child in children:
            await child.start()
        await asyncio.gather(*(wait_healthy(nc, name, start_timeout_s) for name, _module in SERVICES))
        print(banner(settings, nats.url), file=sys.stderr, flush=True)
        await asyncio.gather(_supervise(children, stop), _supervise_nats(nats, stop), _supervise_forks(forks, stop))
    except (TimeoutError, OSError) as exc:
        log.error("the hub could not start", error=str(exc))
        exit_code = 1
    finally:
        log.info("stopping the hub")
        # A dispatcher may take the shutdown timeout to let jobs finish, then a few seconds to hand the rest back.
        await asyncio.gather(*(child.stop(settings.shutdown_timeout_s + 15) for child in reversed(children)))
        if forks is not None:
            await forks.close()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        nats.stop()
        log.info("the hub has stopped")
    return exit_code


async def _supervise(children: list[ServiceProcess], stop: asyncio.Event) -> None:
    stopping = asyncio.ensure_future(stop.wait())
    while not stop.is_set():
        exits = {asyncio.ensure_future(c.process.wait()): c for c in children if c.process is not None}
        done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
        for task in exits:
            if task not in done:
                task.cancel()
        if stop.is_set():
            return
        for task in done:
            child = exits.get(task)
            if child is None:
                continue
            log.error("service exited", target=child.name, code=task.result())
            if not child.may_restart():
                log.error("service keeps crashing; giving up on it", target=child.name)
                stop.set()
                return
            await asyncio.sleep(child.pause_s)
            await child.start()


async def _supervise_nats(nats: NatsServer, stop: asyncio.Event) -> None:
    """Restart nats-server when it dies (kill -9, OOM): same port, same data folder. The services reconnect by
    themselves (endless reconnects) and find their streams, jobs and buckets where they were."""
    budget = RestartBudget()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), NATS_WATCH_EVERY_S)
        if stop.is_set() or nats.process is None or nats.process.poll() is None:
            continue
        log.error("nats-server exited; restarting it on the same port and data folder", code=nats.process.returncode)
        if not budget.may_restart():
            log.error("nats-server keeps crashing; giving up on it (see its log)", log=str(nats.log_file))
            stop.set()
            return
        await asyncio.sleep(budget.pause_s)
        try:
            await asyncio.to_thread(nats.start)
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("nats-server did not come back; trying again", error=str(exc))
            continue
        log.info("nats-server restarted", url=nats.url, store=str(nats.store_dir), pid=nats.process.pid)


async def _supervise_forks(forks: ForkServer | None, stop: asyncio.Event) -> None:
    """Start the fork server again when it dies (kill -9, the OOM killer), so the next service that crashes finds
    its modules imported; the services it started run on. (A service start would also start it, importing then.)"""
    if forks is None:
        return
    budget = RestartBudget()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            process = await forks.running()
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                exited.cancel()
                return
            log.error("the fork server exited; starting it again", code=process.returncode)
            if not budget.may_restart():
                log.error("the fork server keeps crashing; a service restart will start it again")
                return
            await asyncio.sleep(budget.pause_s)
    finally:
        stopping.cancel()
