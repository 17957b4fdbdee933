"""The style library (stored through store.py): listing, saving, deleting, importing, exporting, and the
starter set loaded on the very first start.

Names are unique regardless of case (`name_key`); every multi-row write is one IMMEDIATE transaction, so a
failed import or a racing replica never leaves half a change behind.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from importlib import resources

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.render_types import RenderTypeName
from contracts.messages.styles import (
    BulkResult,
    BulkStyles,
    ExportStyles,
    ImportAction,
    ImportReport,
    ImportRow,
    ImportStyles,
    ListStyles,
    SaveStyle,
    SkippedStyle,
    Style,
    StyleExport,
)
from prompt_service import library, store
from prompt_service.composition import SLOT, misspelt_slot, name_key, name_list, suits, unknown_styles
from prompt_service.store import all_styles, find, transaction

STARTER_FLAG = "starter_styles_loaded"


async def candidates(requested: list[str] | None) -> list[Style]:
    """The styles a build may use: those named, or the defaults; cheap however large the library is."""
    if requested is None:
        return await store.default_styles()
    return await store.styles_named(requested) if requested else []


async def list_styles(req: ListStyles) -> list[Style]:
    styles = await all_styles()
    if req.category is not None:
        styles = [s for s in styles if name_key(s.category) == name_key(req.category)]
    if req.render_type is not None:
        styles = [s for s in styles if suits(s, req.render_type)]
    if not req.include_disabled:
        styles = [s for s in styles if s.enabled]
    return styles


async def get_style(name: str) -> Style:
    style = await find(name)
    if style is None:
        raise await _not_found(name)
    return style


async def _not_found(name: str) -> HubError:
    names = [s.name for s in await all_styles()]
    return HubError(
        ErrorCode.NOT_FOUND,
        f"no style named '{name}'; existing styles: {name_list(names)}",
        field="name",
        details={"valid": names},
    )


def checked(style: Style, field: str = "style") -> Style:
    """The style with tidy name, category and render types; a clear error for what cannot be right."""
    name = " ".join(style.name.split())
    if not name:
        raise HubError(ErrorCode.INVALID_REQUEST, "the style name is blank", field=f"{field}.name")
    for key, text in (("positive", style.positive), ("negative", style.negative)):
        odd = misspelt_slot(text)
        if odd:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"`{key}` contains {odd!r}; write the slot exactly as {SLOT}",
                field=f"{field}.{key}",
            )
    render_types: list[str] = []
    for index, raw in enumerate(style.render_types):
        value = raw.strip().lower()
        try:
            msgspec.convert(value, RenderTypeName)
        except msgspec.ValidationError:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"{raw!r} is not a render type name (lowercase letters, digits, '-', '_' or '.', e.g. 'sdxl')",
                field=f"{field}.render_types[{index}]",
            ) from None
        if value not in render_types:
            render_types.append(value)
    category = " ".join(style.category.split())
    if len(category) > 80:
        message = "the category is longer than 80 characters"
        raise HubError(ErrorCode.INVALID_REQUEST, message, field=f"{field}.category")
    return msgspec.structs.replace(
        style,
        name=name,
        positive=style.positive.strip() or SLOT,
        negative=style.negative.strip(),
        category=category,
        render_types=render_types,
        description=style.description.strip(),
    )


async def save_style(req: SaveStyle) -> Style:
    """Create a style (`original_name` None) or update/rename the one named `original_name`."""
    style = checked(req.style)
    async with transaction():
        clash = await store.ref(style.name)
        if req.original_name is None:
            if clash:
                raise HubError(
                    ErrorCode.CONFLICT,
                    f"a style named '{clash.name}' exists already; choose another name, or edit that style",
                    field="style.name",
                )
            await store.insert_styles([style])
            return style
        current = await store.ref(req.original_name)
        if current is None:
            raise await _not_found(req.original_name)
        if clash and clash.id != current.id:
            raise HubError(
                ErrorCode.CONFLICT,
                f"cannot rename '{req.original_name}' to '{style.name}': a style named '{clash.name}' exists",
                field="style.name",
            )
        await store.update_style(style, row_id=current.id)
    return style


async def delete_style(name: str) -> None:
    async with transaction():
        if not await store.exists(name):
            raise await _not_found(name)
        await store.delete_style(name)


async def bulk_styles(req: BulkStyles) -> BulkResult:
    """Enable, disable, delete or recategorise the named styles in one transaction; an unknown name changes none."""
    category = " ".join(req.category.split())
    if len(category) > 80:
        raise HubError(ErrorCode.INVALID_REQUEST, "the category is longer than 80 characters", field="category")
    async with transaction():
        found = {name_key(s.name): s.name for s in await store.styles_named(req.names)}
        unknown = [n for n in req.names if name_key(n) not in found]
        if unknown:
            raise unknown_styles(unknown, "names", "nothing was changed")
        if req.action == "delete":
            await store.delete_styles(req.names)
        elif req.action == "set_category":
            await store.set_on_styles(req.names, category=category)
        else:
            await store.set_on_styles(req.names, enabled=req.action == "enable")
    return BulkResult(action=req.action, changed=[found[k] for k in dict.fromkeys(name_key(n) for n in req.names)])


async def import_styles(req: ImportStyles) -> ImportReport:
    """The file is read in full first, then written in one transaction (nothing at all on a dry run)."""
    parsed = library.parse(req.format, req.content, " ".join(req.category.split()))
    report = ImportReport(dry_run=req.dry_run, separators=len(parsed.separators))
    for refused in parsed.refused:
        report.skipped.append(SkippedStyle(name=refused.name, reason=refused.reason))
    async with transaction():
        existing = {name_key(s.name): s for s in await all_styles()}
        planned = _plan_import(req, parsed.entries, existing, report)
        if not req.dry_run:
            for updated in planned.updates:
                await store.update_style(updated)
            await store.insert_styles(planned.new_styles)
    report.rows = _rows_in_file_order(parsed, planned.rows)
    return report


@dataclass
class _Plan:
    new_styles: list[Style] = field(default_factory=list)
    updates: list[Style] = field(default_factory=list)
    rows: list[ImportRow] = field(default_factory=list)


def _plan_import(
    req: ImportStyles, entries: list[library.Entry], existing: dict[str, Style], report: ImportReport
) -> _Plan:
    """What each entry does against the stored styles: add, update or skip (and why), filling the report."""
    plan = _Plan()
    next_order = max((s.sort_order for s in existing.values()), default=0) + 1
    first_seen: dict[str, str] = {}
    for entry in entries:
        style = entry.style
        key = name_key(style.name)
        stored = existing.get(key)
        updated = None
        if key in first_seen:
            reason = f"{entry.where}: same name as {first_seen[key]} of the file, which was used"
        elif stored is None:
            reason = ""
            plan.new_styles.append(msgspec.structs.replace(style, sort_order=next_order))
            next_order += 1
            report.added.append(style.name)
        elif req.on_conflict == "skip":
            reason = f"a style named '{stored.name}' exists; on_conflict=skip keeps it (use update to replace)"
        else:
            category = style.category or stored.category
            updated = msgspec.structs.replace(
                stored, positive=style.positive, negative=style.negative, category=category
            )
            reason = f"identical to the stored style '{stored.name}'" if updated == stored else ""
        first_seen.setdefault(key, entry.where)
        if reason:
            report.skipped.append(SkippedStyle(name=style.name, reason=reason))
        elif updated is not None and stored is not None:  # an update always has the style it replaces
            report.updated.append(stored.name)
            plan.updates.append(updated)
        action: ImportAction = "skip" if reason else ("add" if stored is None else "update")
        category = updated.category if updated is not None else style.category
        plan.rows.append(ImportRow(where=entry.where, name=style.name, action=action, reason=reason, category=category))
    return plan


def _rows_in_file_order(parsed: library.Parsed, planned: list[ImportRow]) -> list[ImportRow]:
    """The planned rows with the refused and separator rows put back where they were in the file."""
    rows = (
        planned
        + [ImportRow(where=r.where, name=r.name, action="skip", reason=r.reason) for r in parsed.refused]
        + [ImportRow(where=r.where, name=r.name, action="separator", reason=r.reason) for r in parsed.separators]
    )

    def position(row: ImportRow) -> int:
        number = row.where.rpartition(" ")[2]
        return int(number) if number.isdigit() else 0

    return sorted(rows, key=position)


async def export_styles(req: ExportStyles) -> StyleExport:
    styles = await all_styles()
    if req.names is not None:
        by_key = {name_key(s.name): s for s in styles}
        unknown = [n for n in req.names if name_key(n) not in by_key]
        if unknown:
            valid = [s.name for s in styles]
            raise unknown_styles(unknown, "names", f"existing styles: {name_list(valid)}", valid=valid)
        wanted = {name_key(n) for n in req.names}
        styles = [s for s in styles if name_key(s.name) in wanted]
    return StyleExport(
        format=req.format,
        filename=library.FILENAMES[req.format],
        content=library.export(req.format, styles),
        count=len(styles),
    )


def starter_styles() -> list[Style]:
    """The styles shipped with the service (starter_styles.json beside this module)."""
    raw = resources.files("prompt_service").joinpath("starter_styles.json").read_bytes()
    return [checked(s) for s in msgspec.json.decode(raw, type=list[Style])]


async def load_starter_styles() -> int:
    """Add the starter styles on the service's very first start; never again, even if they are deleted."""
    async with transaction():
        if await store.read_setting(STARTER_FLAG) is not None:
            return 0
        taken = {name_key(s.name) for s in await all_styles()}
        new = [s for s in starter_styles() if name_key(s.name) not in taken]
        if new:
            await store.insert_styles(new)
        await store.write_setting(
            STARTER_FLAG, {"at": datetime.datetime.now(datetime.UTC).isoformat(), "count": len(new)}
        )
    return len(new)
