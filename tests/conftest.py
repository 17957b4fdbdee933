"""Shared fixtures of the test suite: paths, a real nats-server, services as subprocesses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from harness import ServiceProcess, hub_env
from nats.aio.client import Client as NatsClient

from hub_deploy.natsserver import NatsServer

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_DIR = REPO_ROOT / "tests" / "data" / "comfyui-0.3.64"


@pytest.fixture(scope="session")
def protocol_dir() -> Path:
    """The recorded ComfyUI 0.3.64 exchanges (tests/data/comfyui-0.3.64, kept in the repository)."""
    if not PROTOCOL_DIR.is_dir():
        pytest.fail(f"recorded ComfyUI exchanges not found at {PROTOCOL_DIR}: the repository checkout is incomplete")
    return PROTOCOL_DIR


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream for the session, on a free loopback port."""
    root = tmp_path_factory.mktemp("nats")
    server = NatsServer(root / "jetstream", log_file=root / "nats-server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def start_service(nats_server: NatsServer, tmp_path: Path) -> Iterator:
    """`start_service(name, **env)` runs a service process against the session's NATS; all are stopped after."""
    started: list[ServiceProcess] = []

    def start(name: str, data_dir: Path | None = None, **env: str) -> ServiceProcess:
        folder = data_dir or tmp_path / "data"
        service = ServiceProcess(
            name=name,
            env=hub_env(nats_server.url, folder, **env),
            log_path=tmp_path / f"{name}-{len(started)}.log",
        )
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill()


@pytest.fixture
def healthy_service(start_service, nc: NatsClient) -> Callable[..., Awaitable[ServiceProcess]]:
    """`await healthy_service(name, **env)`: `start_service`'s process, once it answers its health check (a test that
    starts a service again on the same data folder, tmp_path/data by default, sees what the first start left)."""

    async def start(name: str, data_dir: Path | None = None, **env: str) -> ServiceProcess:
        service = start_service(name, data_dir, **env)
        await service.wait_healthy(nc)
        return service

    return start
