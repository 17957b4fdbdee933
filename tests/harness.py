"""Test harness: a real nats-server and real service processes, on free loopback ports in a temp dir."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client as NatsClient

from contracts.runtime.config import Settings, load_settings
from hub_deploy.natsserver import NatsServer, free_port
from hub_deploy.services import SERVICES, ping_all, wait_healthy

MODULES = dict(SERVICES)

T = TypeVar("T")


def hub_env(nats_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment a service of the hub under test runs with: its own data folder and free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_NATS_URL=nats_url,
        HUB_DATA_DIR=str(data_dir),
        HUB_LOG_FORMAT="json",
        HUB_LOG_LEVEL="info",
        HUB_GATEWAY_PORT=str(free_port()),
        HUB_UI_PORT=str(free_port()),
        HUB_SHUTDOWN_TIMEOUT_S="5",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def settings_for(service: str, env: dict[str, str]) -> Settings:
    return load_settings(service, env)


@dataclass
class ServiceProcess:
    """A service started with `python -m <module>`; its log goes to a file the test can read."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: object = field(default=None, repr=False)

    def start(self) -> None:
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", MODULES[self.name]],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    async def wait_healthy(self, nc: NatsClient, timeout_s: float = 30.0) -> None:
        """Until this very process serves: the service answers healthy and this pid is among its replicas
        (with replicas running, another one may answer the health request first)."""
        try:
            await wait_healthy(nc, self.name, timeout_s)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not await self._registered(nc):
                if self.process is not None and self.process.poll() is not None:
                    raise TimeoutError(f"{self.name} exited with code {self.process.returncode}")
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{self.name} (pid {self.process and self.process.pid}) never registered")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} log ---\n{self.log()}") from None

    async def _registered(self, nc: NatsClient) -> bool:
        replicas = await ping_all(nc, self.name, wait_s=0.1)
        return any(r.get("metadata", {}).get("pid") == str(self.process and self.process.pid) for r in replicas)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then wait: a graceful stop returns 0."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, timeout_s)
        self._close_log()
        return code

    async def wait_exit(self, timeout_s: float = 20.0) -> int:
        """Wait for the process to end on its own."""
        assert self.process is not None
        code = await asyncio.to_thread(self.process.wait, timeout_s)
        self._close_log()
        return code

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None


@asynccontextmanager
async def service_running(name: str, nats_url: str, root: Path, **env: str) -> AsyncIterator[NatsClient]:
    """A `name` service process (data in root/data, log in root/<name>.log), healthy on entry, with a NATS client
    for the test; on exit the client is closed and the service stopped, which must exit cleanly (0)."""
    proc = ServiceProcess(name=name, env=hub_env(nats_url, root / "data", **env), log_path=root / f"{name}.log")
    proc.start()
    nc = await nats.connect(nats_url)
    try:
        await proc.wait_healthy(nc)
        yield nc
    finally:
        await nc.close()
        assert await proc.stop() == 0, proc.log()


@contextmanager
def service_script_started(root: Path, script: str, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`python -c script *args` (a service's entry point with something around it) against a nats-server of its
    own, returned once its log says "service started", with its log's path; killed on exit if still running."""
    server = NatsServer(root / "jetstream", log_file=root / "nats.log")
    server.start()
    log_path = root / "service.log"
    try:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-c", script, *args],
                env=hub_env(server.url, root / "data"),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 90
            while "service started" not in log_path.read_text(errors="replace"):
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.1)
            yield process, log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        server.stop()


def module_fixture(name: str, folder: str, opened: Callable[[str, Path], AbstractAsyncContextManager[Any]]) -> Any:
    """A test module's fixture `name`: what `opened(nats_url, data_dir)` runs against the session's nats-server in a
    fresh temp folder named after `folder`, for all the tests of the module (`gw = module_fixture("gw", ...)`)."""

    @pytest.fixture(scope="module", name=name)
    async def running(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
        async with opened(nats_server.url, tmp_path_factory.mktemp(folder)) as value:
            yield value

    return running


async def polled(ask: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, within_s: float = 30) -> T:
    """What `ask()` answers once `done` holds of it (asked every 0.1 s); the test fails with the last answer after
    `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await ask()
        if done(answer):
            return answer
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.1)
