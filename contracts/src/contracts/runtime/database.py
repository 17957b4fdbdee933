"""The database each service owns: piccolo over SQLite (aiosqlite) by default, PostgreSQL by URL.

Piccolo finds its engine through the module named by PICCOLO_CONF; every service points it at its own
`piccolo_conf` module before importing its tables (see `use_piccolo_conf`).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from piccolo.apps.migrations.commands.forwards import run_forwards
from piccolo.conf.apps import AppConfig
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from contracts.errors import ErrorCode, HubError
from contracts.runtime.logs import get_logger

if TYPE_CHECKING:
    from contracts.runtime.service import ServiceRuntime

log = get_logger("database")


def use_piccolo_conf(module: str) -> None:
    """Select the service's piccolo_conf module; call before importing piccolo tables."""
    os.environ["PICCOLO_CONF"] = module


def engine_from_url(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers work while a write is in progress; 5 s busy timeout rides out short write bursts.
        return SQLiteEngine(path=str(path), timeout=5.0)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(config={"dsn": url})
    raise HubError(ErrorCode.INVALID_REQUEST, f"unsupported database URL {url!r}", field="database_url")


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


async def prepare(engine: Engine, app_name: str) -> None:
    """Open the database and apply the app's migrations (idempotent; safe when several replicas start)."""
    if isinstance(engine, SQLiteEngine):
        await engine.run_ddl("PRAGMA journal_mode=WAL")
    elif isinstance(engine, PostgresEngine):
        await engine.start_connection_pool()
    # piccolo prints progress to stdout; keep it out of our structured log, but report failures.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        result = await run_forwards(app_name=app_name)
    if not result.success:
        raise HubError(ErrorCode.INTERNAL, f"migrations of {app_name} failed: {result.message}")
    log.info("database ready", app=app_name, migrations=captured.getvalue().count("ok!"))


async def ping(engine: Engine) -> None:
    await engine.run_ddl("SELECT 1")


async def close(engine: Engine) -> None:
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()


def attach(runtime: ServiceRuntime, engine: Engine, app_name: str) -> None:
    """Give a service its database: migrated before it takes requests, checked by health, closed at stop."""

    async def open_database(_runtime: ServiceRuntime) -> None:
        await prepare(engine, app_name)

    async def check() -> str:
        await ping(engine)
        return describe(runtime.settings.database_url)

    async def close_database(_runtime: ServiceRuntime) -> None:
        await close(engine)

    runtime.on_startup(open_database)
    runtime.health_check("database", check)
    runtime.on_shutdown(close_database)


def piccolo_app(app_name: str, package_file: str, table_classes: list[type[Any]]) -> AppConfig:
    """The piccolo app of a service: its tables and the `migrations` folder beside `package_file`."""
    return AppConfig(
        app_name=app_name,
        migrations_folder_path=str(Path(package_file).resolve().parent / "migrations"),
        table_classes=table_classes,
    )


def piccolo_engine(service: str) -> Engine:
    """The engine a service's piccolo_conf exposes as `DB`, from the service's database URL setting."""
    from contracts.runtime.config import load_settings

    return engine_from_url(load_settings(service).database_url)
