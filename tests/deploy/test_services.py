"""Each of the six services starts as its own process, owns a migrated database, answers health over NATS,
and stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import httpx
import nats
import pytest
from harness import MODULES, ServiceProcess, hub_env
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.messages.health import HealthRequest
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer, free_port
from hub_deploy.services import ping_all

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATION_FOLDERS = {
    "registry": "registry-service/src/registry_service/migrations",
    "prompt": "prompt-service/src/prompt_service/migrations",
    "dispatch": "dispatch-service/src/dispatch_service/migrations",
    "stats": "stats-service/src/stats_service/migrations",
    "gateway": "gateway/src/gateway/migrations",
    "ui": "ui/src/ui_service/migrations",
}


@pytest.mark.parametrize("service", list(MODULES))
async def test_service_starts_migrates_answers_health_and_stops_cleanly(
    service: str, healthy_service, nc: NatsClient, tmp_path: Path
) -> None:
    proc = await healthy_service(service)

    health = await call(nc, endpoints.health(service), HealthRequest())
    checks = {c.name: c for c in health.checks}
    assert health.ok and health.service == service
    assert checks["database"].ok and f"{service}.sqlite3" in checks["database"].detail
    assert checks["nats"].ok

    # The database is the service's own file, with its migrations applied at start.
    database = tmp_path / "data" / f"{service}.sqlite3"
    with sqlite3.connect(database) as db:
        ran = db.execute("SELECT app_name, name FROM migration").fetchall()
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    # The initial migration and every migration file of the service's folder ran, each once.
    folder = REPO_ROOT / MIGRATION_FOLDERS[service]
    files = {f.stem for f in folder.glob(f"{service}_*.py")}
    assert (service, "2026-11-24T14:00:00:000000") in ran
    assert len(ran) == len(set(ran)) == len(files)
    assert journal == "wal"

    if service in ("gateway", "ui"):
        port = proc.env[f"HUB_{service.upper()}_PORT"]
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert response.status_code == 200 and response.json()["service"] == service

    assert await proc.stop() == 0
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "service started" in events and events[-1] == "service stopped"
    assert all(line["service"] == service for line in lines)


async def test_a_restarted_service_keeps_its_database_and_does_not_migrate_twice(
    healthy_service, tmp_path: Path
) -> None:
    first = await healthy_service("registry")
    assert await first.stop() == 0
    second = await healthy_service("registry")
    with sqlite3.connect(tmp_path / "data" / "registry.sqlite3") as db:
        migrations = len(list((REPO_ROOT / MIGRATION_FOLDERS["registry"]).glob("registry_*.py")))
        assert db.execute("SELECT count(*) FROM migration").fetchone()[0] == migrations
    assert await second.stop() == 0


async def test_replicas_of_a_service_are_all_discoverable(start_service, nc: NatsClient, tmp_path: Path) -> None:
    replicas = [start_service("prompt", data_dir=tmp_path / "data") for _ in range(2)]
    for replica in replicas:
        await replica.wait_healthy(nc)
    # Health is answered by any one replica, so the other may still be starting: ask until both answer.
    ids: set[object] = set()
    for _ in range(20):
        ids = {a["id"] for a in await ping_all(nc, "prompt")}
        if len(ids) == 2:
            break
    assert len(ids) == 2
    for replica in replicas:
        assert await replica.stop() == 0


async def test_a_configuration_mistake_stops_the_service_with_a_message(start_service, tmp_path: Path) -> None:
    proc = start_service("stats", HUB_REQUEST_TIMEOUT_S="soon")
    assert await proc.wait_exit() == 2
    log = proc.log()
    assert "HUB_REQUEST_TIMEOUT_S" in log and "Traceback" not in log


async def test_a_service_started_before_nats_connects_once_nats_is_up(tmp_path: Path) -> None:
    """Services tolerate a NATS that comes up after them (e.g. containers starting in any order)."""
    port = free_port()
    proc = ServiceProcess(
        name="dispatch",
        env=hub_env(f"nats://127.0.0.1:{port}", tmp_path / "data"),
        log_path=tmp_path / "dispatch.log",
    )
    proc.start()
    await asyncio.sleep(1.0)
    server = NatsServer(tmp_path / "js", port=port)
    server.start()
    try:
        client = await nats.connect(server.url)
        await proc.wait_healthy(client)
        await client.close()
        assert await proc.stop() == 0
    finally:
        proc.kill()
        server.stop()


@pytest.mark.parametrize("service", ["registry", "prompt", "dispatch", "stats"])
async def test_replicas_starting_together_on_a_fresh_database_migrate_once(
    service: str, start_service, nc: NatsClient, tmp_path: Path
) -> None:
    replicas = [start_service(service, data_dir=tmp_path / "data") for _ in range(3)]
    for replica in replicas:
        await replica.wait_healthy(nc)
    with sqlite3.connect(tmp_path / "data" / f"{service}.sqlite3") as db:
        names = [row[0] for row in db.execute("SELECT name FROM migration WHERE app_name = ?", (service,))]
    assert len(names) == len(set(names))  # every migration ran exactly once
    for replica in replicas:
        assert await replica.stop() == 0
        assert "already exists" not in replica.log()


async def test_a_service_waiting_for_nats_stops_on_sigterm(tmp_path: Path) -> None:
    proc = ServiceProcess(
        name="registry",
        env=hub_env(f"nats://127.0.0.1:{free_port()}", tmp_path / "data"),  # nothing listens there
        log_path=tmp_path / "registry.log",
    )
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while "starting" not in proc.log():  # its signal handlers are in place (a loaded machine starts slowly)
            assert time.monotonic() < deadline, proc.log()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert proc.process is not None and proc.process.poll() is None  # still waiting for NATS
        assert await proc.stop(timeout_s=10) == 0
        assert "stop requested while starting" in proc.log()
    finally:
        proc.kill()  # a service that ignored SIGTERM must not outlive the test
