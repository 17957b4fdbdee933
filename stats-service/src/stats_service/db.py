"""Small helpers over the service's piccolo engine, so the domain modules read the same on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from piccolo.engine.sqlite import SQLiteEngine

from contracts.runtime import database
from stats_service.tables import GenerationRow


def engine() -> Any:
    return GenerationRow._meta.db


def is_sqlite() -> bool:
    return isinstance(engine(), SQLiteEngine)


def write_transaction() -> Any:
    """A transaction for read-modify-write on this service's database (PostgreSQL: rows read FOR UPDATE)."""
    return database.write_transaction(engine())


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern whose escape character is `!`."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def like_operator() -> str:
    """Case-insensitive LIKE: SQLite's LIKE already ignores ASCII case; PostgreSQL needs ILIKE."""
    return "LIKE" if is_sqlite() else "ILIKE"


def as_text(column: str) -> str:
    """A JSON column compared as text (PostgreSQL stores it as json, SQLite as text)."""
    return column if is_sqlite() else f"{column}::text"
