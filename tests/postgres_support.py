"""A private PostgreSQL server for the tests: Debian's server binaries, a temp folder, a free loopback port.

`find_postgres_bindir()` says where the binaries are (or why there are none); `PostgresServer` runs `initdb`
and `postgres` (as the `postgres` user when the tests run as root, since PostgreSQL refuses to run as root),
trusts loopback connections, and creates one database per service.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from hub_deploy.natsserver import free_port, wait_for_port

SUPERUSER = "hub"
SERVER_USER = "postgres"  # Debian's account for the server; the data folder belongs to it


def find_postgres_bindir() -> tuple[Path | None, str]:
    """The folder with `initdb` and `postgres`, or None and the reason (for the skip message)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(Path(found.stdout.strip()))

    def version(path: Path) -> int:
        match = re.search(r"/(\d+)/bin$", str(path))
        return int(match.group(1)) if match else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            if os.geteuid() == 0:
                try:
                    pwd.getpwnam(SERVER_USER)
                except KeyError:
                    return None, f"PostgreSQL found in {folder}, but no `{SERVER_USER}` user to run it as (we are root)"
            return folder, ""
    return None, (
        "PostgreSQL server binaries not found (no initdb and postgres via `pg_config --bindir` or in "
        "/usr/lib/postgresql/*/bin): install Debian's `postgresql` package (./hub test does this as root or with sudo)"
    )


class PostgresServer:
    """One throw-away PostgreSQL cluster; durability is off (fsync) since the tests never outlive it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.host = "127.0.0.1"
        # Not under pytest's tmp folder: that one is private to root and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="hub-postgres-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._as_server_user = os.geteuid() == 0

    def _user_kwargs(self) -> dict[str, object]:
        if not self._as_server_user:
            return {}
        return {"user": SERVER_USER, "group": SERVER_USER, "extra_groups": []}

    def start(self, timeout_s: float = 60.0) -> None:
        if self._as_server_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.root,
            **self._user_kwargs(),  # type: ignore[arg-type]
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        log = self.log_path.open("ab")
        if self._as_server_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **self._user_kwargs(),  # type: ignore[arg-type]
        )
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout_s, self.process)
            asyncio.run(self._wait_accepting(timeout_s))
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {exc}\n--- log ---\n{self.log()}") from exc

    async def _wait_accepting(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                connection = await asyncpg.connect(self.url("postgres"), timeout=2)
                await connection.close()
                return
            except (OSError, asyncpg.PostgresError):  # still starting up ("the database system is starting up")
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        """A new, empty database (dropped first if it exists); returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        connection = await asyncpg.connect(self.url("postgres"))
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()
        return self.url(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: ends the sessions left
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the pytest plugin that runs existing test modules on PostgreSQL ----------------------------------------
#
# `HUB_TEST_POSTGRES_URL=postgresql://hub@127.0.0.1:PORT pytest -p postgres_support tests/test_x.py` runs the
# tests unchanged, except that every service they start gets its database on that server: the plugin wraps
# `harness.hub_env` (through which every test starts a service) to add HUB_<SERVICE>_DATABASE_URL, one database
# per service and data folder, so a service restarted on the same folder finds its data again, as with SQLite.
# Tests that look into a stats database through `StatsHub.rows` read the PostgreSQL one instead.

PLUGIN_URL_VAR = "HUB_TEST_POSTGRES_URL"
_server_url_key = pytest.StashKey[str]()
_databases: dict[tuple[str, str], str] = {}


def _run_sync(coroutine_factory):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion from sync code that may itself be inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine_factory())).result()


def _database_for(server_url: str, data_dir: Path, service: str) -> str:
    key = (str(Path(data_dir).resolve()), service)
    if key not in _databases:
        name = f"p{os.getpid()}_{len(_databases)}_{service}"

        async def create() -> None:
            connection = await asyncpg.connect(f"{server_url}/postgres")
            try:
                await connection.execute(f"CREATE DATABASE {name}")
            finally:
                await connection.close()

        _run_sync(create)
        _databases[key] = f"{server_url}/{name}"
    return _databases[key]


def _on_postgres(server_url: str):  # type: ignore[no-untyped-def]
    import harness

    from hub_deploy.services import SERVICES

    original = harness.hub_env

    def hub_env(nats_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
        env = original(nats_url, data_dir, **overrides)
        for service, _module in SERVICES:
            variable = f"HUB_{service.upper()}_DATABASE_URL"
            if variable not in overrides:
                env[variable] = _database_for(server_url, data_dir, service)
        return env

    harness.hub_env = hub_env


def _stats_rows_on_postgres(server_url: str) -> None:
    import stats_support

    def rows(hub, sql: str, *args):  # type: ignore[no-untyped-def]
        url = _database_for(server_url, hub.root / "data", "stats")
        counter = iter(range(1, len(args) + 1))
        numbered = re.sub(r"\?", lambda _match: f"${next(counter)}", sql)

        async def fetch() -> list[tuple[object, ...]]:
            connection = await asyncpg.connect(url)
            try:
                return [tuple(record.values()) for record in await connection.fetch(numbered, *args)]
            except asyncpg.UndefinedTableError:  # not migrated yet: as the SQLite version, nothing stored
                return []
            finally:
                await connection.close()

        return _run_sync(fetch)

    stats_support.StatsHub.rows = rows


def pytest_load_initial_conftests(early_config, parser, args) -> None:  # type: ignore[no-untyped-def]
    """Before conftest.py imports `hub_env`: every service started by the tests runs on PostgreSQL."""
    server_url = os.environ.get(PLUGIN_URL_VAR, "").rstrip("/")
    if not server_url:
        raise RuntimeError(f"-p postgres_support needs {PLUGIN_URL_VAR}=postgresql://user@host:port")
    _on_postgres(server_url)
    early_config.stash[_server_url_key] = server_url


def pytest_collection_modifyitems(session, config, items) -> None:  # type: ignore[no-untyped-def]
    if "stats_support" in sys.modules:
        _stats_rows_on_postgres(config.stash[_server_url_key])
