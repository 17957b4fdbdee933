"""CPU per query of the shared SQLite engine (contracts/runtime/database.py) against its former query path.

    .venv/bin/python bench/sqlite_engine_bench.py [--queries 3000]

The engine runs each query outside a transaction on one long-lived aiosqlite connection. Each hop to that
connection's thread costs a thread wake-up and a future on the event loop; the engine now makes one hop per query
(execute and fetch together; the connection is in autocommit, so a commit hop is owed only inside a transaction).
`three hops` is the former path (execute, fetch, commit every time), kept here to measure against in the same run.
Printed: process CPU (both threads) and wall time per point lookup and per single-row insert, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from contracts.runtime.database import SharedConnectionSQLiteEngine


class ThreeHopEngine(SharedConnectionSQLiteEngine):
    """The query path before: execute, fetch and commit as three hops, even after a SELECT."""

    async def _run_in_new_connection(
        self, query: str, args: list[Any] | None = None, query_type: str = "generic", table: Any = None
    ) -> list[dict[str, Any]]:
        async with self.shared_connection() as connection:
            async with connection.execute(query, args or []) as cursor:
                rows = await cursor.fetchall()
            await connection.commit()
            return rows  # type: ignore[return-value]  # piccolo's SQLite connections make each row a dict


async def per_query(engine: SharedConnectionSQLiteEngine, queries: int, sql: str) -> tuple[float, float]:
    """(CPU ms, wall ms) per query."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(queries):
        await engine._run_in_new_connection(sql, [i % 500, f"job {i}"] if "?" in sql else [])
    return (time.process_time() - cpu) * 1000 / queries, (time.perf_counter() - wall) * 1000 / queries


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sqlite-bench-") as tmp:
        engines = {
            "three hops": ThreeHopEngine(str(Path(tmp) / "old.sqlite")),
            "now": SharedConnectionSQLiteEngine(str(Path(tmp) / "new.sqlite")),
        }
        for engine in engines.values():
            await engine._run_in_new_connection("PRAGMA journal_mode = WAL")
            await engine._run_in_new_connection("CREATE TABLE job (n INTEGER, name TEXT)")
            for i in range(500):
                await engine._run_in_new_connection("INSERT INTO job VALUES (?, ?)", [i, f"job {i}"])
        figures: dict[tuple[str, str], tuple[float, float]] = {}
        for kind, sql in (
            ("select", "SELECT * FROM job WHERE n = ? AND name <> ?"),
            ("insert", "INSERT INTO job VALUES (?, ?)"),
        ):
            for label, engine in engines.items():
                figures[kind, label] = await per_query(engine, args.queries, sql)
                cpu, wall = figures[kind, label]
                print(f"{kind} {label:10s}: {cpu:.3f} ms CPU, {wall:.3f} ms wall per query ({args.queries} queries)")
            old, new = figures[kind, "three hops"], figures[kind, "now"]
            print(f"{kind} ratio three hops / now: CPU {old[0] / new[0]:.2f}x, wall {old[1] / new[1]:.2f}x")
        for engine in engines.values():
            await engine.close_shared()


if __name__ == "__main__":
    asyncio.run(main())
