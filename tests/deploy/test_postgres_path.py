"""Every service on PostgreSQL. A private PostgreSQL server (tests/postgres_support.py) gives each service a
database through HUB_<SERVICE>_DATABASE_URL; the services migrate it, start together as replicas, keep the UI's
admin account, and the suite's database tests run again, unchanged, with every service on PostgreSQL.
Skipped, with the reason, where no PostgreSQL server binaries are installed (./hub test installs them as root)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from harness import MODULES
from nats.aio.client import Client as NatsClient
from postgres_support import PLUGIN_URL_VAR, PostgresServer, find_postgres_bindir

from contracts import endpoints
from contracts.messages.health import HealthRequest
from contracts.runtime.bus import call
from contracts.runtime.config import database_env_var
from hub_deploy.natsserver import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS = REPO_ROOT / "tests"

# The suite's modules that exercise the services' tables, run again with every service on PostgreSQL, and the
# tests left out of that run.
SUITE_ON_POSTGRES: dict[str, list[str]] = {
    "registry": ["registry/test_registry_service.py", "registry/test_registry_workflows.py"],
    "prompt": ["prompt/test_prompt_styles.py", "prompt/test_prompt_build.py"],
    "stats": ["stats/test_stats_service.py", "stats/test_stats_retention.py", "stats/test_stats_restart.py"],
    "dispatch": ["dispatch/test_dispatch_service.py"],
    "dispatch_recovery": ["dispatch/test_dispatch_recovery.py"],  # its own child: its kill-and-restart cases are long
    "dispatch_fair_share": ["dispatch/test_fair_share.py"],  # two replicas on one database
    "gateway": ["gateway/test_gateway_mcp.py", "gateway/test_gateway_tasks.py"],
    "ui": ["ui/test_ui_signin_throttle.py"],
}
LEFT_OUT = [
    "test_a_database_outage_loses_no_event_and_shows_in_health",  # holds a SQLite write lock
    # Asserts scheduling gaps of hundredths of a second, which a busy 2-core machine can exceed while PostgreSQL
    # runs beside the hub; its jobs and database work are the same as in the other dispatch tests.
    "test_a_burst_is_spread_by_pull_and_no_instance_idles_while_jobs_wait",
]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir, reason = find_postgres_bindir()
    if bindir is None:
        pytest.skip(reason)
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database for this test, named after it (PostgreSQL names are at most 63 bytes)."""
    readable = "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:40]
    return await postgres.create_database(f"t_{readable}_{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]}")


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def migration_files(service: str) -> set[str]:
    return {f.stem for f in REPO_ROOT.glob(f"*/src/*/migrations/{service}_*.py")}


@pytest.mark.parametrize("service", list(MODULES))
async def test_service_migrates_its_postgres_database_and_reports_it(
    service: str, start_service, nc: NatsClient, pg_url: str, tmp_path: Path
) -> None:
    proc = start_service(service, data_dir=tmp_path / "data", **{database_env_var(service): pg_url})
    await proc.wait_healthy(nc)
    health = await call(nc, endpoints.health(service), HealthRequest())
    checks = {c.name: c for c in health.checks}
    assert checks["database"].ok and checks["database"].detail == pg_url, checks["database"]

    ran = await fetch(pg_url, "SELECT app_name, name FROM migration")
    assert len(ran) == len(migration_files(service)) > 0 and {r["app_name"] for r in ran} == {service}
    assert not (tmp_path / "data" / f"{service}.sqlite3").exists(), "the SQLite default was used instead"
    assert await proc.stop() == 0


@pytest.mark.parametrize("service", ["registry", "dispatch"])
async def test_replicas_starting_together_on_a_fresh_postgres_database_migrate_once(
    service: str, start_service, nc: NatsClient, pg_url: str, tmp_path: Path
) -> None:
    """The start-up advisory lock keeps three replicas from creating the same tables at once."""
    replicas = [
        start_service(service, data_dir=tmp_path / f"data-{i}", **{database_env_var(service): pg_url}) for i in range(3)
    ]
    for replica in replicas:
        await replica.wait_healthy(nc)
    names = [r["name"] for r in await fetch(pg_url, "SELECT name FROM migration WHERE app_name = $1", service)]
    assert sorted(names) == sorted(set(names)) and len(names) == len(migration_files(service))
    for replica in replicas:
        assert await replica.stop() == 0
        assert "already exists" not in replica.log()


async def test_the_ui_keeps_its_admin_account_in_postgres(
    start_service, nc: NatsClient, pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {"HUB_UI_DATABASE_URL": pg_url, "HUB_UI_PORT": str(port), "HUB_ADMIN_PASSWORD": "s3cret-Pass"}
    ui = start_service("ui", data_dir=tmp_path / "data", **env)
    await ui.wait_healthy(nc)
    rows = await fetch(pg_url, "SELECT username, password_hash, created_at FROM admin_account")
    assert len(rows) == 1 and rows[0]["username"] == "admin"
    assert rows[0]["password_hash"].startswith("scrypt$") and "s3cret-Pass" not in rows[0]["password_hash"]
    assert rows[0]["created_at"].tzinfo is not None  # a timestamptz column, not a naive text date
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        token = (await client.get("/login")).text.split('name="_csrf_token" value="')[1].split('"')[0]
        wrong = await client.post("/login", data={"username": "admin", "password": "guess", "_csrf_token": token})
        assert wrong.headers.get("location") != "/" and (await client.get("/status")).status_code != 200
        signed_in = await client.post(
            "/login", data={"username": "admin", "password": "s3cret-Pass", "_csrf_token": token}
        )
        assert signed_in.status_code in (302, 303) and signed_in.headers["location"] == "/", signed_in.text
        assert (await client.get("/status")).status_code == 200
    assert await ui.stop() == 0

    # A second start with the same password keeps the account as it is (first-start data is seeded once).
    ui = start_service("ui", data_dir=tmp_path / "data", **env)
    await ui.wait_healthy(nc)
    again = await fetch(pg_url, "SELECT username, password_hash, created_at FROM admin_account")
    assert [tuple(r.values()) for r in again] == [tuple(r.values()) for r in rows]
    assert await ui.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", list(SUITE_ON_POSTGRES))
def test_the_suites_database_tests_pass_with_the_service_on_postgres(
    service: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    """The modules' own tests, unchanged, in a child pytest whose services all get PostgreSQL databases."""
    env = {
        **os.environ,
        PLUGIN_URL_VAR: postgres.url("").rstrip("/"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    modules = [str(TESTS / name) for name in SUITE_ON_POSTGRES[service]]
    deselect = " and ".join(f"not {name}" for name in LEFT_OUT)
    options = ["-p", "postgres_support", "-p", "no:cacheprovider", "-q", "-k", deselect]
    child = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "--basetemp", str(tmp_path / "child"), *modules],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,  # dispatch_recovery, the longest: 274 s at load ~3 (19 cases)
    )
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
