"""The database each service owns: piccolo over SQLite (aiosqlite) by default, PostgreSQL by URL.

Piccolo finds its engine through the module named by PICCOLO_CONF, a process-wide setting; every service points it
at its own `piccolo_conf` module before importing its tables (see `use_piccolo_conf`). So that several services can
share one process (`HUB_LAYOUT=single`), each `piccolo_conf` also ties its tables to its engine (`own_tables`), and
migrations, the one part of piccolo that reads PICCOLO_CONF while running, run one service at a time (`prepare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import aiosqlite
from piccolo.apps.migrations.commands.forwards import run_forwards
from piccolo.apps.migrations.tables import Migration
from piccolo.conf.apps import AppConfig, AppRegistry
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine, PostgresTransaction
from piccolo.engine.sqlite import SQLiteEngine, SQLiteTransaction, TransactionType
from piccolo.table import Table

from contracts.errors import ErrorCode, HubError
from contracts.runtime.logs import get_logger

if TYPE_CHECKING:
    from contracts.runtime.service import ServiceRuntime

log = get_logger("database")

Seed = Callable[[], Awaitable[None]]


def use_piccolo_conf(module: str) -> None:
    """Select the service's piccolo_conf module; call before importing piccolo tables."""
    os.environ["PICCOLO_CONF"] = module


# The piccolo_conf module of each engine `own_tables` was given (keyed by id: engines live as long as the process).
_CONF_MODULE_OF_ENGINE: dict[int, str] = {}
# Held while one service migrates: piccolo's migration runner reads PICCOLO_CONF and caches an engine on its
# `Migration` table, both process globals.
_MIGRATING = asyncio.Lock()


def own_tables(engine: Engine[Any], registry: AppRegistry, conf_module: str) -> None:
    """Tie every table of the service's piccolo apps to `engine` (piccolo would otherwise look the engine up through
    PICCOLO_CONF at the first query, which names another service's database when services share a process), and
    remember which `piccolo_conf` module holds it, for the migrations (`prepare`). Called by each piccolo_conf."""
    for app in registry.app_configs.values():
        for table in app.table_classes:
            table._meta.db = engine
    _CONF_MODULE_OF_ENGINE[id(engine)] = conf_module


def _point_piccolo_at(engine: Engine[Any]) -> None:
    """PICCOLO_CONF and piccolo's migration table set to the service that owns `engine` (called under _MIGRATING)."""
    conf_module = _CONF_MODULE_OF_ENGINE.get(id(engine))
    if conf_module is not None:
        os.environ["PICCOLO_CONF"] = conf_module
        Migration._meta.db = engine


class SharedConnectionSQLiteEngine(SQLiteEngine):
    """piccolo's SQLite engine with one long-lived connection for the queries outside a transaction.

    piccolo opens a new aiosqlite connection (and its thread) for every such query, about 1.5 ms each; here
    they share one connection, one at a time, which makes a simple query a fraction of a millisecond.
    Transactions still get a connection of their own, as in piccolo, but one kept open between transactions
    (`ReusedConnectionTransaction`): opening one cost the stats service, which writes a transaction per batch of
    events, about a quarter of its CPU. Every connection runs in WAL mode with `synchronous=NORMAL`: durable
    across a crash of the process, a commit costs no fsync.
    """

    def __init__(self, path: str, **connection_kwargs: Any) -> None:
        super().__init__(path=path, **connection_kwargs)
        self._shared: aiosqlite.Connection | None = None
        self._shared_lock: asyncio.Lock | None = None
        self._idle: list[aiosqlite.Connection] = []  # transaction connections between two transactions

    def transaction(
        self, transaction_type: TransactionType = TransactionType.deferred, allow_nested: bool = True
    ) -> SQLiteTransaction:
        return ReusedConnectionTransaction(engine=self, transaction_type=transaction_type, allow_nested=allow_nested)

    async def take_connection(self) -> aiosqlite.Connection:
        """An idle transaction connection, or a new one."""
        return self._idle.pop() if self._idle else await self.get_connection()

    async def give_back(self, connection: aiosqlite.Connection) -> None:
        """A transaction's connection, once it ended: kept for the next unless enough wait, or it is unclean."""
        if len(self._idle) < MAX_IDLE_TRANSACTION_CONNECTIONS and not connection.in_transaction:
            self._idle.append(connection)
        else:
            await connection.close()

    async def get_connection(self) -> aiosqlite.Connection:
        connection = await super().get_connection()
        await connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    async def _run_in_new_connection(
        self,
        query: str,
        args: list[Any] | None = None,
        query_type: str = "generic",
        table: Any = None,
    ) -> list[dict[str, Any]]:
        async with self.shared_connection() as connection:
            try:
                # One hop to the connection's thread per query (execute and fetch together). piccolo opens it in
                # autocommit (isolation_level None), so a commit, another hop, is owed only if one is open.
                rows = list(await connection.execute_fetchall(query, args or []))
                if connection.in_transaction:
                    await connection.commit()
            except BaseException:
                await connection.rollback()
                raise
            return rows  # type: ignore[return-value]  # piccolo's SQLite connections make each row a dict

    async def _run_in_existing_connection(
        self,
        connection: aiosqlite.Connection,
        query: str,
        args: list[Any] | None = None,
        query_type: str = "generic",
        table: Any = None,
    ) -> list[dict[str, Any]]:
        """A statement inside a transaction, in one hop to the connection's thread (execute and fetch together).
        piccolo's makes three: it sets `foreign_keys` again before each statement (get_connection set it when the
        connection was opened, and it holds for the connection's life) and fetches apart."""
        if query_type == "insert" and self.get_version_sync() < 3.35:  # no RETURNING: piccolo's way
            return cast(
                list[dict[str, Any]],
                await super()._run_in_existing_connection(connection, query, args, query_type, table),
            )
        rows = await connection.execute_fetchall(query, args or [])
        return cast(list[dict[str, Any]], list(rows))  # piccolo's SQLite connections make each row a dict

    @contextlib.asynccontextmanager
    async def shared_connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The one connection of the queries outside a transaction, for one query at a time (opened at first use)."""
        if self._shared_lock is None:
            self._shared_lock = asyncio.Lock()
        async with self._shared_lock:
            if self._shared is None:
                self._shared = await self.get_connection()
            yield self._shared

    async def close_shared(self) -> None:
        if self._shared is not None:
            await self._shared.close()
            self._shared = None
        while self._idle:
            await self._idle.pop().close()


# Transactions at once beyond this open connections that are closed after them (SQLite has one writer anyway).
MAX_IDLE_TRANSACTION_CONNECTIONS = 4


@functools.lru_cache(maxsize=512)
def _with_question_marks(sql: str) -> str:
    return sql.replace("{}", "?")


def marks(count: int) -> str:
    """`{}, {}, ...`: the marks of `count` arguments in a `run_raw` statement."""
    return ", ".join(["{}"] * count)


def quoted_columns(names: Iterable[str]) -> str:
    """`"a", "b"`: column names for a `run_raw` statement (quoted, so none is read as a keyword)."""
    return ", ".join(f'"{name}"' for name in names)


def assignments(names: Iterable[str]) -> str:
    """`"a" = {}, "b" = {}`: the SET list of a `run_raw` UPDATE, one argument per column."""
    return ", ".join(f'"{name}" = {{}}' for name in names)


async def run_raw(table: type[Table], sql: str, *args: Any) -> list[dict[str, Any]]:
    """`table.raw(sql, *args).run()` (`{}` marks each argument), its rows as dicts. On SQLite it goes to the
    connection straight (the shared one, or the current transaction's): piccolo's query object, its template parse
    and its compile of the statement cost more CPU than SQLite takes to run a job's hot statements (dispatch makes
    ~6 per job; the stats service writes each job's row in its batch's transaction)."""
    engine = table._meta.db
    if isinstance(engine, SharedConnectionSQLiteEngine):
        transaction = engine.current_transaction.get()
        if transaction is None:
            return await engine._run_in_new_connection(_with_question_marks(sql), list(args))
        return await engine._run_in_existing_connection(transaction.connection, _with_question_marks(sql), list(args))
    return cast(list[dict[str, Any]], await table.raw(sql, *args).run())


class ReusedConnectionTransaction(SQLiteTransaction):
    """piccolo's SQLite transaction on a connection kept open by the engine, not opened and closed each time."""

    engine: SharedConnectionSQLiteEngine

    async def get_connection(self) -> aiosqlite.Connection:
        return await self.engine.take_connection()

    async def __aexit__(self, exception_type: Any, exception: BaseException | None, traceback: Any) -> bool:
        if self._parent:
            return exception is None
        try:
            if exception is not None:
                if not self._rolled_back:
                    await self.rollback()  # type: ignore[no-untyped-call]  # piccolo leaves it unannotated
            elif not self._committed and not self._rolled_back:
                await self.commit()  # type: ignore[no-untyped-call]  # piccolo leaves it unannotated
        except BaseException:
            await self.connection.close()  # its state is unknown: not reused
            raise
        finally:
            self.engine.current_transaction.reset(self.context)
        await self.engine.give_back(self.connection)
        return exception is None


def engine_from_url(url: str) -> Engine[Any]:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers work while a write is in progress; 5 s busy timeout rides out short write bursts.
        return SharedConnectionSQLiteEngine(path=str(path), timeout=5.0)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(config={"dsn": url})
    raise HubError(ErrorCode.INVALID_REQUEST, f"unsupported database URL {url!r}", field="database_url")


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@contextlib.asynccontextmanager
async def startup_lock(engine: Engine[Any]) -> AsyncIterator[None]:
    """Held while a replica migrates and seeds, so replicas starting together never do it twice at once.

    piccolo checks which migrations ran and then runs the rest outside one transaction: two replicas on a fresh
    database would both create the tables. SQLite: an exclusive lock on a file beside the database;
    PostgreSQL: a session advisory lock.
    """
    if isinstance(engine, SQLiteEngine):
        with open(f"{engine.path}.startup-lock", "ab") as lock_file:  # noqa: ASYNC230, PTH123 - instant
            await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    elif isinstance(engine, PostgresEngine):
        import asyncpg

        connection = await asyncpg.connect(engine.config["dsn"])
        try:
            await connection.execute("SELECT pg_advisory_lock($1)", _STARTUP_LOCK_KEY)
            yield
        finally:
            await connection.close()  # closing the session releases the lock
    else:
        yield


_STARTUP_LOCK_KEY = 0x6875625F696E6974  # "hub_init"


async def prepare(engine: Engine[Any], app_name: str, seed: Seed | None = None) -> None:
    """Open the database, apply the app's migrations, then run `seed` (first-start data), all under the
    start-up lock: idempotent, and safe when several replicas start at once."""
    async with startup_lock(engine):
        if isinstance(engine, SQLiteEngine):
            await engine.run_ddl("PRAGMA journal_mode=WAL")
        elif isinstance(engine, PostgresEngine):
            await engine.start_connection_pool()
        # piccolo prints progress to stdout; keep it out of our structured log, but report failures.
        captured = io.StringIO()
        async with _MIGRATING:
            _point_piccolo_at(engine)
            with contextlib.redirect_stdout(captured):
                result = await run_forwards(app_name=app_name)
        if not result.success:
            raise HubError(ErrorCode.INTERNAL, f"migrations of {app_name} failed: {result.message}")
        log.info("database ready", app=app_name, migrations=captured.getvalue().count("ok!"))
        if seed is not None:
            await seed()


async def ping(engine: Engine[Any]) -> None:
    await engine.run_ddl("SELECT 1")


async def close(engine: Engine[Any]) -> None:
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()
    elif isinstance(engine, SharedConnectionSQLiteEngine):
        await engine.close_shared()


def attach(runtime: ServiceRuntime, engine: Engine[Any], app_name: str, *, seed: Seed | None = None) -> None:
    """Give a service its database: migrated (and seeded with its first-start data by `seed`, which must be
    idempotent) before it takes requests, checked by health, closed at stop."""

    async def open_database(_runtime: ServiceRuntime) -> None:
        await prepare(engine, app_name, seed)

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


def piccolo_engine(service: str) -> Engine[Any]:
    """The engine a service's piccolo_conf exposes as `DB`, from the service's database URL setting."""
    from contracts.runtime.config import load_settings

    return engine_from_url(load_settings(service).database_url)


def write_transaction(engine: Engine[Any]) -> contextlib.AbstractAsyncContextManager[Any]:
    """A transaction for writes: on SQLite it takes the write lock at once (BEGIN IMMEDIATE), so two writers
    never deadlock upgrading read locks; on PostgreSQL one that takes the database's writer lock first."""
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    if isinstance(engine, PostgresEngine):
        return WriterLockedPostgresTransaction(engine)
    other: contextlib.AbstractAsyncContextManager[Any] = engine.transaction()
    return other


class WriterLockedPostgresTransaction(PostgresTransaction):
    """A PostgreSQL transaction that first takes the database's writer lock (a transaction advisory lock), so
    writers run one at a time as on SQLite: the services' read-check-write steps (e.g. "the edit started from
    the current version") stay correct under PostgreSQL's default READ COMMITTED isolation."""

    async def begin(self) -> None:
        await super().begin()  # type: ignore[no-untyped-call]  # piccolo leaves it unannotated
        await self.connection.execute("SELECT pg_advisory_xact_lock($1)", _WRITER_LOCK_KEY)


_WRITER_LOCK_KEY = 0x6875625F77726974  # "hub_writ"; not the start-up lock's key, which a seed runs under
