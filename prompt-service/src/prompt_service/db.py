"""Write transactions on the service's database."""

from __future__ import annotations

from typing import Any

from contracts.runtime.database import write_transaction
from prompt_service.tables import StyleTable


def transaction() -> Any:
    """A write transaction on this service's database (on SQLite it takes the write lock at once)."""
    return write_transaction(StyleTable._meta.db)
