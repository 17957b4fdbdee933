"""The prompt service's storage: styles and service-wide settings (the only module touching its tables).

Styles come back as `Style` Structs, a style's identity as a `StyleRef`, settings as decoded JSON values; the
rules (names, imports, LLM settings) live in styles.py and llm_settings.py. Names are unique regardless of case
through `name_key`.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from contracts.envelope import Empty
from contracts.messages.base import struct_from
from contracts.messages.styles import Style
from contracts.runtime.database import write_transaction
from prompt_service.composition import listing_order, name_key
from prompt_service.tables import SettingTable, StyleTable

INSERT_BATCH = 200  # rows per INSERT statement
# How long the default styles are kept at most: a write here or one announced by another replica
# (topics.Prompt.STYLES_CHANGED) drops them at once; this bounds a missed announcement.
DEFAULTS_TTL_S = 10.0


class StyleRef(msgspec.Struct, frozen=True):
    """A stored style's row id and name as stored."""

    id: int
    name: str


class _DefaultStyles:
    """The default styles, which every build without named styles reads (one query less per job), kept until a
    change; a read that overlapped a change is not kept."""

    def __init__(self) -> None:
        self.styles: list[Style] | None = None
        self.read_at = 0.0
        self.changes = 0

    def forget(self) -> None:
        self.changes += 1
        self.styles = None


_defaults = _DefaultStyles()


@asynccontextmanager
async def transaction() -> AsyncIterator[Any]:
    """A write transaction on this service's database (on SQLite it takes the write lock at once); the default
    styles kept for builds are dropped once it ends (committed or not)."""
    try:
        async with write_transaction(StyleTable._meta.db) as connection:
            yield connection
    finally:
        _defaults.forget()


async def forget_default_styles(_changed: Empty) -> None:
    """`topics.Prompt.STYLES_CHANGED` heard: a replica (maybe this one) changed styles."""
    _defaults.forget()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _style(row: dict[str, Any]) -> Style:
    return struct_from(
        Style,
        row,
        render_types=json.loads(row["render_types"] or "[]"),
        is_default=bool(row["is_default"]),
        enabled=bool(row["enabled"]),
    )


def _columns(style: Style) -> dict[Any, Any]:
    return {
        StyleTable.name: style.name,
        StyleTable.name_key: name_key(style.name),
        StyleTable.category: style.category,
        StyleTable.positive: style.positive,
        StyleTable.negative: style.negative,
        StyleTable.render_types: json.dumps(style.render_types),
        StyleTable.is_default: style.is_default,
        StyleTable.enabled: style.enabled,
        StyleTable.sort_order: style.sort_order,
        StyleTable.description: style.description,
        StyleTable.updated_at: _now(),
    }


def _new_row(style: Style) -> StyleTable:
    return StyleTable(**{column._meta.name: value for column, value in _columns(style).items()})


# -- styles: reads -------------------------------------------------------------------------------------------


async def all_styles() -> list[Style]:
    rows = await StyleTable.select().run()
    return sorted((_style(r) for r in rows), key=listing_order)


async def default_styles() -> list[Style]:
    kept = _defaults.styles
    if kept is not None and time.monotonic() - _defaults.read_at <= DEFAULTS_TTL_S:
        return list(kept)
    changes, read_at = _defaults.changes, time.monotonic()
    rows = await StyleTable.select().where(StyleTable.is_default == True).run()  # noqa: E712
    styles = [_style(r) for r in rows]
    if changes == _defaults.changes:
        _defaults.styles, _defaults.read_at = styles, read_at
    return list(styles)


async def styles_named(names: Sequence[str]) -> list[Style]:
    rows = await StyleTable.select().where(StyleTable.name_key.is_in([name_key(n) for n in names])).run()
    return [_style(r) for r in rows]


async def find(name: str) -> Style | None:
    row = await StyleTable.select().where(StyleTable.name_key == name_key(name)).first().run()
    return _style(row) if row else None


async def ref(name: str) -> StyleRef | None:
    """The stored style whose name is `name` regardless of case."""
    row = (
        await StyleTable.select(StyleTable.id, StyleTable.name)
        .where(StyleTable.name_key == name_key(name))
        .first()
        .run()
    )
    return msgspec.convert(row, StyleRef) if row else None


async def exists(name: str) -> bool:
    return await StyleTable.exists().where(StyleTable.name_key == name_key(name)).run()


# -- styles: writes (inside `transaction()` when they must go together) --------------------------------------


async def insert_styles(styles: Sequence[Style]) -> None:
    for start in range(0, len(styles), INSERT_BATCH):
        await StyleTable.insert(*(_new_row(s) for s in styles[start : start + INSERT_BATCH])).run()


async def update_style(style: Style, *, row_id: int | None = None) -> None:
    """Store `style` over the row `row_id` (a rename), or over the row of the same name."""
    where = StyleTable.id == row_id if row_id is not None else StyleTable.name_key == name_key(style.name)
    await StyleTable.update(_columns(style)).where(where).run()


async def delete_style(name: str) -> None:
    await StyleTable.delete().where(StyleTable.name_key == name_key(name)).run()


async def delete_styles(names: Sequence[str]) -> None:
    await StyleTable.delete().where(StyleTable.name_key.is_in([name_key(n) for n in names])).run()


async def set_on_styles(names: Sequence[str], *, category: str | None = None, enabled: bool | None = None) -> None:
    """Set the category and/or the enabled flag of the named styles (the others fields stay)."""
    change: dict[Any, Any] = {StyleTable.updated_at: _now()}
    if category is not None:
        change[StyleTable.category] = category
    if enabled is not None:
        change[StyleTable.enabled] = enabled
    await StyleTable.update(change).where(StyleTable.name_key.is_in([name_key(n) for n in names])).run()


# -- settings --------------------------------------------------------------------------------------------------


async def read_setting(key: str) -> Any | None:
    row = await SettingTable.select(SettingTable.value).where(SettingTable.key == key).first().run()
    return msgspec.json.decode(row["value"]) if row else None


async def write_setting(key: str, value: Any) -> None:
    """Insert or replace; call inside a transaction when it must go with other writes."""
    encoded = msgspec.json.encode(value).decode()
    now = _now()
    if await SettingTable.exists().where(SettingTable.key == key).run():
        await (
            SettingTable.update({SettingTable.value: encoded, SettingTable.updated_at: now})
            .where(SettingTable.key == key)
            .run()
        )
    else:
        await SettingTable.insert(SettingTable(key=key, value=encoded, updated_at=now)).run()
