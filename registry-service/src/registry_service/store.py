"""The render type catalogue in the registry's database: reads, and writes that are all or nothing.

Every write runs in one write transaction (on SQLite an IMMEDIATE one, so concurrent writers queue instead of
failing on a lock upgrade): the render type row and its new history row are stored together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec

from contracts.envelope import Empty
from contracts.errors import ErrorCode, HubError
from contracts.messages.base import struct_from
from contracts.messages.render_types import (
    DeletedRenderType,
    ParameterMap,
    RenderDefaults,
    RenderLimits,
    RenderType,
    RenderTypeHistory,
    RenderTypeVersion,
    Requirements,
)
from contracts.runtime.database import write_transaction
from contracts.runtime.logs import get_logger
from registry_service.definition import prepare, same_definition
from registry_service.tables import RegistryStateRow, RenderTypeRow, RenderTypeVersionRow

T = TypeVar("T")

SEEDED_KEY = "seeded_render_types"
# What a rollback takes from the old version: the definition. Name, flags and version stay those of today, and
# the requirements are derived again from the restored workflow.
ROLLED_BACK = ("description", "workflow", "parameter_map", "defaults", "limits", "output_kind")

log = get_logger("registry.store")
# How long a render type read for resolving is kept at most: changes made here or announced by another replica
# (topics.Registry.CHANGED) drop it at once; this bounds a missed announcement.
RESOLVE_CACHE_TTL_S = 10.0


def _encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _decode(value: Any, kind: type[T]) -> T:
    if isinstance(value, str | bytes):
        return msgspec.json.decode(value, type=kind)
    return msgspec.convert(value, type=kind)


def _render_type(row: dict[str, Any]) -> RenderType:
    return struct_from(
        RenderType,
        row,
        workflow=_decode(row["workflow"], dict[str, Any]),
        parameter_map=_decode(row["parameter_map"], ParameterMap),
        defaults=_decode(row["defaults"], RenderDefaults),
        limits=_decode(row["limits"], RenderLimits),
        requirements=_decode(row["requirements"], Requirements),
    )


def _columns(render_type: RenderType) -> dict[str, Any]:
    """The row values of a render type (name, flags and version are set by the caller)."""
    return {
        "description": render_type.description,
        "workflow": _encode(render_type.workflow),
        "parameter_map": _encode(render_type.parameter_map),
        "defaults": _encode(render_type.defaults),
        "limits": _encode(render_type.limits),
        "requirements": _encode(render_type.requirements),
        "output_kind": render_type.output_kind,
    }


def _conflict(message: str, field: str | None = None, **details: object) -> HubError:
    return HubError(ErrorCode.CONFLICT, message, field=field, details=details or None)


class RenderTypeStore:
    """Reads and writes render types and their history; the only code that touches these tables.

    Resolving (one per job) reads its render type through a cache (`for_resolve`): a database query less per job.
    Every write here drops it when its transaction ends, and so does `forget` (another replica's change)."""

    def __init__(self) -> None:
        self._resolvable: dict[str | None, RenderType] = {}  # by name; None: the default render type
        self._changes = 0  # writes and forgets so far: a read that overlapped one is not kept
        self._filled_at = 0.0

    # -- reads ----------------------------------------------------------------------------------------

    async def for_resolve(self, name: str | None) -> RenderType | None:
        """The render type `name` (None: the default), as `find`/`default` read it, kept until a change."""
        if time.monotonic() - self._filled_at > RESOLVE_CACHE_TTL_S:
            self._resolvable.clear()
        if (kept := self._resolvable.get(name)) is not None:
            return kept
        changes, read_at = self._changes, time.monotonic()
        found = await (self.default() if name is None else self.find(name))
        if found is not None and changes == self._changes:  # a miss is not kept: any name may be asked
            if not self._resolvable:
                self._filled_at = read_at
            self._resolvable[name] = found
        return found

    def forget(self) -> None:
        """Drop the render types kept for resolving (a change here or announced by another replica)."""
        self._changes += 1
        self._resolvable.clear()

    async def forget_announced(self, _changed: Empty) -> None:
        """`topics.Registry.CHANGED` heard: a replica (maybe this one) changed render types."""
        self.forget()

    async def all(self, *, include_disabled: bool = True) -> list[RenderType]:
        query = RenderTypeRow.select().order_by(RenderTypeRow.name)
        if not include_disabled:
            query = query.where(RenderTypeRow.enabled.eq(True))
        return [_render_type(row) for row in await query.run()]

    async def names(self, *, enabled_only: bool = False) -> list[str]:
        query = RenderTypeRow.select(RenderTypeRow.name).order_by(RenderTypeRow.name)
        if enabled_only:
            query = query.where(RenderTypeRow.enabled.eq(True))
        return [row["name"] for row in await query.run()]

    async def find(self, name: str) -> RenderType | None:
        row = await RenderTypeRow.select().where(RenderTypeRow.name == name).first().run()
        return _render_type(row) if row else None

    async def get(self, name: str, *, field: str = "name") -> RenderType:
        found = await self.find(name)
        if found is None:
            raise await self._not_found(name, field)
        return found

    async def default(self) -> RenderType | None:
        row = await RenderTypeRow.select().where(RenderTypeRow.is_default.eq(True)).first().run()
        return _render_type(row) if row else None

    async def _not_found(self, name: str, field: str) -> HubError:
        names = await self.names()
        listed = ", ".join(names) if names else "none yet"
        return HubError(
            ErrorCode.NOT_FOUND,
            f"there is no render type named {name!r}; the render types are: {listed}",
            field=field,
            details={"valid": names},
        )

    async def history(self, name: str, *, include_snapshots: bool = False) -> RenderTypeHistory:
        row = await self._row(name, "name")
        rows = (
            await RenderTypeVersionRow.select()
            .where(RenderTypeVersionRow.render_type == row["id"])
            .order_by(RenderTypeVersionRow.version, ascending=False)
            .run()
        )
        return RenderTypeHistory(
            name=name,
            versions=[
                RenderTypeVersion(
                    version=r["version"],
                    changed_by=r["changed_by"],
                    changed_at=r["changed_at"],
                    note=r["note"],
                    snapshot=_decode(r["snapshot"], RenderType) if include_snapshots else None,
                )
                for r in rows
            ],
        )

    async def _row(self, name: str, field: str) -> dict[str, Any]:
        row = await RenderTypeRow.select().where(RenderTypeRow.name == name).first().run()
        if row is None:
            raise await self._not_found(name, field)
        return row

    # -- writes ---------------------------------------------------------------------------------------

    async def save(
        self, render_type: RenderType, *, original_name: str | None, changed_by: str, note: str = ""
    ) -> RenderType:
        """Create (version 0) or update (the version the editor started from) a render type."""
        prepared = prepare(render_type)
        source = original_name or prepared.name
        async with self._writing():
            row = await RenderTypeRow.select().where(RenderTypeRow.name == source).first().run()
            if row is None:
                if original_name and original_name != prepared.name:
                    raise await self._not_found(original_name, "original_name")
                if prepared.version != 0:
                    raise _conflict(
                        f"render type {prepared.name!r} no longer exists (deleted meanwhile?); "
                        "send version 0 to create it again",
                        current_version=None,
                    )
                return await self._create(prepared, changed_by, note or "created")
            current = _render_type(row)
            await self._check_update(prepared, current, source)
            if prepared.name == source and same_definition(prepared, current):
                return current  # nothing changed: no new version
            if prepared.is_default and not current.is_default:
                await self._clear_default()
            elif prepared.enabled and not await RenderTypeRow.exists().where(RenderTypeRow.is_default.eq(True)):
                # The first enabled render type becomes the default, so there always is one to fall back on.
                prepared = msgspec.structs.replace(prepared, is_default=True)
            if not note:
                note = f"renamed from {source!r}" if prepared.name != source else "updated"
            return await self._update(row["id"], prepared, current.version + 1, changed_by, note, name=prepared.name)

    async def _check_update(self, prepared: RenderType, current: RenderType, source: str) -> None:
        """An edit must start from the current version and may not take another render type's name."""
        if prepared.version == 0:
            raise _conflict(
                f"a render type named {prepared.name!r} already exists (version {current.version}); pick another "
                f"name, or send version {current.version} to edit it",
                "render_type.name",  # the name is what a form should change
                current_version=current.version,
            )
        if prepared.version != current.version:
            raise _conflict(
                f"render type {source!r} was changed meanwhile (it is at version {current.version}, your edit "
                f"started from version {prepared.version}); reload it and apply your changes again",
                current_version=current.version,
            )
        if prepared.name != source and await RenderTypeRow.exists().where(RenderTypeRow.name == prepared.name):
            raise HubError(
                ErrorCode.CONFLICT,
                f"cannot rename {source!r} to {prepared.name!r}: a render type with that name exists",
                field="render_type.name",
            )
        self._check_default_rules(prepared, was_default=current.is_default)

    async def rollback(self, name: str, version: int, *, changed_by: str, expected_version: int | None) -> RenderType:
        """Make the definition of an earlier version current again, as a new version."""
        async with self._writing():
            row = await self._row(name, "name")
            current = _render_type(row)
            self._check_expected(current, expected_version)
            old = (
                await RenderTypeVersionRow.select(RenderTypeVersionRow.snapshot)
                .where((RenderTypeVersionRow.render_type == row["id"]) & (RenderTypeVersionRow.version == version))
                .first()
                .run()
            )
            if old is None:
                versions = await RenderTypeVersionRow.select(RenderTypeVersionRow.version).where(
                    RenderTypeVersionRow.render_type == row["id"]
                )
                known = sorted(r["version"] for r in versions)
                raise HubError(
                    ErrorCode.NOT_FOUND,
                    f"render type {name!r} has no version {version}; its versions are {', '.join(map(str, known))}",
                    field="version",
                    details={"valid": known},
                )
            snapshot = _decode(old["snapshot"], RenderType)
            restored = msgspec.structs.replace(current, **{name: getattr(snapshot, name) for name in ROLLED_BACK})
            try:
                restored = prepare(restored)
            except HubError as exc:
                raise HubError(
                    ErrorCode.INVALID_REQUEST,
                    f"version {version} of {name!r} cannot be restored: {exc.info.message}",
                    field="version",
                    details=exc.info.details,
                ) from None
            return await self._update(
                row["id"], restored, current.version + 1, changed_by, f"rolled back to version {version}"
            )

    async def delete(self, name: str, *, expected_version: int | None) -> DeletedRenderType:
        async with self._writing():
            row = await self._row(name, "name")
            current = _render_type(row)
            self._check_expected(current, expected_version)
            if current.is_default:
                others = [n for n in await self.names(enabled_only=True) if n != name]
                if others:
                    raise HubError(
                        ErrorCode.CONFLICT,
                        f"{name!r} is the default render type; make another one the default first "
                        f"(e.g. {others[0]!r}), then delete it",
                        field="name",
                        details={"valid": others},
                    )
            removed = await RenderTypeVersionRow.count().where(RenderTypeVersionRow.render_type == row["id"])
            await RenderTypeVersionRow.delete().where(RenderTypeVersionRow.render_type == row["id"])
            await RenderTypeRow.delete().where(RenderTypeRow.id == row["id"])
            # Exactly one default while any render type exists: the last one of a kind keeps that promise.
            if current.is_default:
                await self._promote_any_default()
        log.info("render type deleted", render_type=name, versions_removed=removed)
        return DeletedRenderType(name=name, versions_removed=removed)

    async def set_default(self, name: str) -> RenderType:
        async with self._writing():
            row = await self._row(name, "name")
            if not row["enabled"]:
                raise HubError(
                    ErrorCode.INVALID_REQUEST,
                    f"render type {name!r} is disabled; enable it before making it the default",
                    field="name",
                )
            await self._clear_default()
            await RenderTypeRow.update({RenderTypeRow.is_default: True}).where(RenderTypeRow.id == row["id"])
        log.info("default render type set", render_type=name)
        return await self.get(name)

    async def seed(self, render_types: Sequence[RenderType], *, changed_by: str, note: str) -> list[str]:
        """Store the shipped render types once, on the first start of an empty registry; their names, or []."""
        async with self._writing():
            if await RegistryStateRow.exists().where(RegistryStateRow.key == SEEDED_KEY):
                return []
            existing = await RenderTypeRow.count()
            loaded: list[str] = []
            if existing == 0:
                for render_type in render_types:
                    created = await self._create(prepare(render_type), changed_by, note)
                    loaded.append(created.name)
            # Recorded even when the registry was not empty, so deleted shipped types never come back.
            await RegistryStateRow.insert(RegistryStateRow(key=SEEDED_KEY, value=_encode(loaded)))
            return loaded

    # -- helpers (inside a transaction) ---------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """A write transaction; what `for_resolve` kept is dropped once it ends (committed or not)."""
        try:
            async with write_transaction(RenderTypeRow._meta.db):
                yield
        finally:
            self.forget()

    @staticmethod
    def _check_expected(current: RenderType, expected_version: int | None) -> None:
        if expected_version is not None and expected_version != current.version:
            raise _conflict(
                f"render type {current.name!r} was changed meanwhile (it is at version {current.version}, you "
                f"expected version {expected_version}); reload it and try again",
                current_version=current.version,
            )

    @staticmethod
    def _check_default_rules(render_type: RenderType, *, was_default: bool) -> None:
        if was_default and not render_type.is_default:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"{render_type.name!r} is the default render type and there must always be one; make another "
                "render type the default instead (set_default)",
                field="render_type.is_default",
            )
        if (render_type.is_default or was_default) and not render_type.enabled:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"{render_type.name!r} is the default render type, which cannot be disabled; make another render "
                "type the default first",
                field="render_type.enabled",
            )

    async def _clear_default(self) -> None:
        await RenderTypeRow.update({RenderTypeRow.is_default: False}).where(RenderTypeRow.is_default.eq(True))

    async def _promote_any_default(self) -> None:
        candidate = (
            await RenderTypeRow.select(RenderTypeRow.id)
            .where(RenderTypeRow.enabled.eq(True))
            .order_by(RenderTypeRow.name)
            .first()
        )
        if candidate is not None:
            await RenderTypeRow.update({RenderTypeRow.is_default: True}).where(RenderTypeRow.id == candidate["id"])

    async def _create(self, render_type: RenderType, changed_by: str, note: str) -> RenderType:
        has_default = await RenderTypeRow.exists().where(RenderTypeRow.is_default.eq(True))
        is_default = render_type.is_default or (not has_default and render_type.enabled)
        self._check_default_rules(msgspec.structs.replace(render_type, is_default=is_default), was_default=False)
        if is_default and has_default:
            await self._clear_default()
        now = time.time()
        stored = msgspec.structs.replace(
            render_type, is_default=is_default, version=1, updated_at=now, updated_by=changed_by
        )
        inserted = await RenderTypeRow.insert(
            RenderTypeRow(
                name=stored.name,
                enabled=stored.enabled,
                is_default=stored.is_default,
                version=1,
                created_at=now,
                updated_at=now,
                updated_by=changed_by,
                **_columns(stored),
            )
        ).returning(RenderTypeRow.id)
        await self._add_version(inserted[0]["id"], stored, changed_by, now, note)
        log.info("render type created", render_type=stored.name, by=changed_by, default=stored.is_default)
        return stored

    async def _update(
        self,
        row_id: int,
        render_type: RenderType,
        version: int,
        changed_by: str,
        note: str,
        *,
        name: str | None = None,
    ) -> RenderType:
        now = time.time()
        stored = msgspec.structs.replace(render_type, version=version, updated_at=now, updated_by=changed_by)
        values: dict[Any, Any] = {
            RenderTypeRow.enabled: stored.enabled,
            RenderTypeRow.is_default: stored.is_default,
            RenderTypeRow.version: version,
            RenderTypeRow.updated_at: now,
            RenderTypeRow.updated_by: changed_by,
        }
        values.update({getattr(RenderTypeRow, column): value for column, value in _columns(stored).items()})
        if name is not None:
            values[RenderTypeRow.name] = name
        await RenderTypeRow.update(values).where(RenderTypeRow.id == row_id)
        await self._add_version(row_id, stored, changed_by, now, note)
        log.info("render type saved", render_type=stored.name, version=version, by=changed_by, note=note)
        return stored

    async def _add_version(self, row_id: int, stored: RenderType, changed_by: str, now: float, note: str) -> None:
        await RenderTypeVersionRow.insert(
            RenderTypeVersionRow(
                render_type=row_id,
                version=stored.version,
                snapshot=_encode(stored),
                changed_by=changed_by,
                changed_at=now,
                note=note,
            )
        )
