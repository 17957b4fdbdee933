"""`python -m hub_deploy cluster`: a rehearsal of the clustered deployment on one machine, without containers.

Three nats-server processes on loopback form one cluster (each with JetStream, its own store folder and
routes to the other two), then every service runs as several replicas that list all three servers in
HUB_NATS_URL and create their streams and buckets with HUB_JETSTREAM_REPLICAS=3. The replicas of one service
share one data folder (and so its SQLite files); the runtime's start-up lock keeps their migrations apart.
Gateway and UI replicas each get their own HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient

from hub_deploy.natsserver import NatsServer, free_port, kill_process, stop_process
from hub_deploy.services import SERVICES, ping_all, wait_healthy

NATS_NODES = 3
# Services whose replicas listen on HTTP, and the variable naming the port of each.
HTTP_PORT_VARIABLES = {"gateway": "HUB_GATEWAY_PORT", "ui": "HUB_UI_PORT"}


@dataclass
class Replica:
    """One replica of a service: `python -m <module>` with its own log file."""

    service: str
    module: str
    index: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def http_port(self) -> int | None:
        variable = HTTP_PORT_VARIABLES.get(self.service)
        return int(self.env[variable]) if variable else None

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to the rehearsal, which stops replicas in order
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the replica gets no chance to clean up (what a crash or an OOM kill looks like)."""
        kill_process(self.process)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        return stop_process(self.process, timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class ClusterRehearsal:
    """Three clustered NATS servers and `replicas` processes of each service, all under `root`."""

    root: Path
    replicas: int = 2
    services: tuple[tuple[str, str], ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    nats: list[NatsServer] = field(default_factory=list)
    processes: list[Replica] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def nats_url(self) -> str:
        return ",".join(server.url for server in self.nats)

    def start_nats(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cluster_ports = [free_port() for _ in range(NATS_NODES)]
        for index, cluster_port in enumerate(cluster_ports):
            routes = [f"nats://127.0.0.1:{port}" for port in cluster_ports if port != cluster_port]
            server = NatsServer(
                self.root / f"nats-{index}" / "jetstream",
                name=f"hub-nats-{index}",
                cluster_port=cluster_port,
                cluster_routes=routes,
                log_file=self.log_dir / f"nats-{index}.log",
            )
            server.start()
            self.nats.append(server)

    async def wait_jetstream(self, nc: NatsClient, timeout_s: float = 30.0) -> None:
        """Until the JetStream meta group has a leader: before that, creating a stream fails."""
        deadline = time.monotonic() + timeout_s
        js = nc.jetstream()
        while True:
            try:
                await js.account_info()
                return
            except Exception as exc:  # any answer but a good one means "not yet"
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream of the cluster not ready after {timeout_s:g} s: {exc}") from None
                await asyncio.sleep(0.2)

    async def move_leaders_off(self, nc: NatsClient, server: NatsServer, timeout_s: float = 20.0) -> None:
        """Ask every stream and consumer led by `server` to elect a leader elsewhere (what a rolling restart does
        before stopping a server), and wait until it leads none."""
        deadline = time.monotonic() + timeout_s
        while True:
            led = await self.led_by(nc, server.name)
            if not led:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.name} still leads {led} after {timeout_s:g} s")
            for stepdown in led:
                with contextlib.suppress(Exception):  # a leader already moving answers with an error
                    await nc.request(f"$JS.API.{stepdown}", b"", timeout=2)
            await asyncio.sleep(0.5)

    @staticmethod
    async def led_by(nc: NatsClient, server_name: str) -> list[str]:
        """The step-down API subjects (without `$JS.API.`) of the streams and consumers `server_name` leads."""
        js = nc.jetstream()
        led: list[str] = []
        for stream in await js.streams_info():
            name = stream.config.name
            if stream.cluster is not None and stream.cluster.leader == server_name:
                led.append(f"STREAM.LEADER.STEPDOWN.{name}")
            for consumer in await js.consumers_info(name):  # type: ignore[arg-type]  # a listed stream has a name
                if consumer.cluster is not None and consumer.cluster.leader == server_name:
                    led.append(f"CONSUMER.LEADER.STEPDOWN.{name}.{consumer.name}")
        return led

    def environment(self, service: str, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(
            HUB_NATS_URL=self.nats_url,
            HUB_JETSTREAM_REPLICAS=str(NATS_NODES),
            HUB_DATA_DIR=str(self.data_dir),
            HUB_LOG_FORMAT="json",
            HUB_GATEWAY_PORT=str(free_port()),
            HUB_UI_PORT=str(free_port()),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start_services(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for service, module in self.services:
            for index in range(self.replicas):
                replica = Replica(
                    service=service,
                    module=module,
                    index=index,
                    env=self.environment(service, index),
                    log_path=self.log_dir / f"{service}-{index}.log",
                )
                replica.start()
                self.processes.append(replica)

    async def wait_healthy(self, nc: NatsClient, timeout_s: float = 60.0) -> None:
        """Until every service answers healthy and every live replica (by pid) answers `$SRV.PING`."""
        names = sorted({replica.service for replica in self.processes})
        await asyncio.gather(*(wait_healthy(nc, name, timeout_s) for name in names))
        deadline = time.monotonic() + timeout_s
        while missing := await self.unregistered(nc):
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas never registered: {', '.join(missing)}")
            for replica in self.processes:
                if replica.process is not None and replica.process.poll() is not None and replica.label in missing:
                    raise RuntimeError(f"{replica.label} exited with code {replica.process.returncode}")

    async def unregistered(self, nc: NatsClient) -> list[str]:
        """Labels of the live replicas that do not answer nats.micro's `$SRV.PING` (yet)."""
        answered = {str(reply.get("metadata", {}).get("pid")) for reply in await ping_all(nc, wait_s=0.3)}
        return [
            replica.label
            for replica in self.processes
            if replica.alive() and replica.process is not None and str(replica.process.pid) not in answered
        ]

    def replicas_of(self, service: str) -> list[Replica]:
        return [replica for replica in self.processes if replica.service == service]

    def stop(self) -> None:
        """Replicas first (newest service first), then the NATS servers."""
        for replica in reversed(self.processes):
            if replica.alive():
                assert replica.process is not None
                replica.process.send_signal(signal.SIGTERM)
        for replica in reversed(self.processes):
            replica.stop()
        for server in self.nats:
            server.stop()

    def describe(self) -> str:
        lines = ["", "GenImage Hub cluster rehearsal is running."]
        lines += [f"  NATS       {server.url}  (store {server.store_dir})" for server in self.nats]
        for replica in self.processes:
            port = f"  http://127.0.0.1:{replica.http_port}/" if replica.http_port else ""
            pid = replica.process.pid if replica.process else "-"
            lines.append(f"  {replica.label:<12} pid {pid}{port}")
        lines += [f"  Data       {self.data_dir}", f"  Logs       {self.log_dir}", "Press Ctrl-C to stop.", ""]
        return "\n".join(lines)


async def run_cluster(root: Path, replicas: int = 2, start_timeout_s: float = 90.0) -> int:
    """Start the rehearsal, print where everything is, run until Ctrl-C / SIGTERM, then stop it all."""
    import nats

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rehearsal = ClusterRehearsal(root=root, replicas=replicas)
    nc: NatsClient | None = None
    try:
        rehearsal.start_nats()
        nc = await nats.connect(servers=[server.url for server in rehearsal.nats])
        await rehearsal.wait_jetstream(nc)
        rehearsal.start_services()
        await rehearsal.wait_healthy(nc, start_timeout_s)
        print(rehearsal.describe(), file=sys.stderr, flush=True)
        await stop.wait()
        return 0
    except (TimeoutError, OSError, RuntimeError) as exc:
        print(f"the cluster rehearsal could not start: {exc} (logs in {rehearsal.log_dir})", file=sys.stderr)
        return 1
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        rehearsal.stop()
