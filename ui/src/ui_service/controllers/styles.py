"""Styles: a filtered, paginated list with bulk actions, add and edit at the top, import with a preview
(Fooocus JSON, A1111 CSV), export."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.messages.styles import (
    BulkStyles,
    DeleteStyle,
    ExportStyles,
    GetStyle,
    ImportReport,
    ImportStyles,
    ListStyles,
    SaveStyle,
    Style,
    StyleFormat,
)
from ui_service.forms import form_of, invalid, style_from_form, uploaded_text
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, act_then_redirect, always, ask_then_redirect, flash, page, require_admin

PAGE_SIZE = 50
STATES = {"all": "All", "enabled": "Enabled", "disabled": "Disabled", "default": "Applied by default"}
BULK_DONE = {"enable": "Enabled", "disable": "Disabled", "delete": "Deleted", "set_category": "Recategorised"}


@dataclass(frozen=True)
class Listing:
    """One page of the filtered library, and what the filter bar and the pager need to show."""

    styles: list[Style]
    total: int
    matching: int
    page: int
    pages: int
    first: int
    categories: list[tuple[str, int]]
    query: dict[str, str]

    def link(self, **change: Any) -> str:
        wanted = {**self.query, **{k: str(v) for k, v in change.items()}}
        return "/styles?" + urlencode({k: v for k, v in wanted.items() if v and v != "all"})


def filtered(styles: list[Style], params: Any) -> Listing:
    """The styles the filter bar selects (text, category, state), cut to the page asked for."""
    query = {k: str(params.get(k, "")).strip() for k in ("q", "category", "state")}
    text = query["q"].lower()
    chosen = [
        s
        for s in styles
        if (not text or text in f"{s.name} {s.category} {s.positive} {s.negative}".lower())
        and (not query["category"] or s.category == query["category"] or (query["category"] == "-" and not s.category))
        and _in_state(s, query["state"])
    ]
    pages = max(1, math.ceil(len(chosen) / PAGE_SIZE))
    number = min(max(1, _int(params.get("page"), 1)), pages)
    counts: dict[str, int] = {}
    for style in styles:
        counts[style.category] = counts.get(style.category, 0) + 1
    start = (number - 1) * PAGE_SIZE
    return Listing(
        styles=chosen[start : start + PAGE_SIZE],
        total=len(styles),
        matching=len(chosen),
        page=number,
        pages=pages,
        first=start + 1,
        categories=sorted(counts.items(), key=lambda item: item[0].lower()),
        query=query,
    )


def _in_state(style: Style, state: str) -> bool:
    if state == "enabled":
        return style.enabled
    if state == "disabled":
        return not style.enabled
    if state == "default":
        return style.is_default
    return True


def _int(value: Any, fallback: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return fallback


async def styles_page(
    request: Request,
    hub: HubClient,
    form: dict[str, str] | None = None,
    errors: dict | None = None,
    preview: ImportReport | None = None,
    import_form: dict[str, str] | None = None,
) -> Template:
    listed, error = await hub.try_ask(endpoints.Prompt.STYLES_LIST, ListStyles())
    listing = filtered(listed.styles if listed else [], request.query_params)
    return page(
        "styles.html",
        request,
        listing=listing,
        styles=listing.styles,
        query=listing.query["q"],
        states=STATES,
        back=listing.link(page=listing.page),
        load_error=error,
        editing=form is not None or "new" in request.query_params,
        form=form or {"enabled": "on", "positive": "{prompt}"},
        errors=errors or {},
        preview=preview,
        import_form=import_form or {"format": "fooocus_json"},
    )


def edit_form_of(style: Style) -> dict[str, str]:
    return {
        "original_name": style.name,
        "name": style.name,
        "positive": style.positive,
        "negative": style.negative,
        "category": style.category,
        "render_types": ", ".join(style.render_types),
        "description": style.description,
        "enabled": "on" if style.enabled else "",
        "is_default": "on" if style.is_default else "",
    }


def safe_back(target: str) -> str:
    """Where a bulk action returns: the list as it was filtered, never another site."""
    return target if target.startswith("/styles?") or target == "/styles" else "/styles"


async def import_request(data: Any) -> tuple[ImportStyles, dict[str, str]]:
    """The import form as a request (a dry run unless confirmed), and the form's values to show again."""
    upload = data.get("file")
    content = await uploaded_text(upload) or str(data.get("content", ""))
    category = str(data.get("category", "")).strip()
    filename = getattr(upload, "filename", None)
    if not category and filename:
        category = PurePath(filename).stem  # a file's styles belong together by default
    file_format: StyleFormat = "a1111_csv" if data.get("format") == "a1111_csv" else "fooocus_json"
    on_conflict: Literal["skip", "update"] = "update" if data.get("on_conflict") == "update" else "skip"
    kept = {"format": file_format, "category": category, "on_conflict": on_conflict, "content": content}
    importing = ImportStyles(
        format=file_format,
        content=content,
        on_conflict=on_conflict,
        category=category,
        dry_run=data.get("step") != "import",
    )
    return importing, kept


def import_summary(report: ImportReport) -> str:
    parts = [f"{len(report.added)} added", f"{len(report.updated)} updated", f"{len(report.skipped)} skipped"]
    if report.separators:
        parts.append(f"{report.separators} section rows used as categories")
    return "Imported: " + ", ".join(parts) + "."


class StylesController(Controller):
    path = "/styles"
    guards = [require_admin]

    @get("/")
    async def styles(self, request: Request, hub: HubClient) -> Template:
        editing = request.query_params.get("edit")
        if not editing:
            return await styles_page(request, hub)
        style = await hub.ask(endpoints.Prompt.STYLES_GET, GetStyle(name=editing))
        return await styles_page(request, hub, edit_form_of(style))

    @post("/")
    async def save_style(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection() as rejected:
            style = style_from_form(form)
            saving = SaveStyle(style=style, original_name=form.get("original_name") or None)
            await hub.ask(endpoints.Prompt.STYLES_SAVE, saving)
        if rejected:
            return await styles_page(request, hub, form, rejected.errors)
        flash(request, f"Saved style {style.name}.")
        return Redirect("/styles")

    @post("/delete")
    async def delete_style(self, request: Request, hub: HubClient) -> Redirect:
        form = await form_of(request)
        name = form.get("name", "")
        back = safe_back(form.get("back", "/styles"))
        deleting = DeleteStyle(name=name)
        return await ask_then_redirect(
            request, hub, endpoints.Prompt.STYLES_DELETE, deleting, target=back, done=f"Deleted style {name}."
        )

    @post("/bulk")
    async def bulk(self, request: Request, hub: HubClient) -> Redirect:
        data = await request.form()
        names = [str(v) for v in data.getall("names")] if "names" in data else []
        action = str(data.get("action", ""))
        with Rejection() as rejected:
            if not names:
                raise invalid("tick the styles to change first (the box in the header ticks the whole page)")
            if action not in BULK_DONE:
                raise invalid("choose what to do with the ticked styles")
            # `action` is one of BULK_DONE's keys (checked above): a BulkStyleAction.
            bulk = BulkStyles(names=names, action=action, category=str(data.get("category", "")))  # type: ignore[arg-type]
            done = await hub.ask(endpoints.Prompt.STYLES_BULK, bulk, timeout=30)
        target = safe_back(str(data.get("back", "/styles")))
        if rejected:
            return act_then_redirect(request, target, rejected, "")
        into = f" into '{bulk.category.strip()}'" if action == "set_category" and bulk.category.strip() else ""
        count = len(done.changed)
        return act_then_redirect(
            request, target, rejected, f"{BULK_DONE[action]} {count} style{'s' * (count != 1)}{into}."
        )

    @post("/import")
    async def import_styles(self, request: Request, hub: HubClient) -> Template | Redirect:
        data = await request.form()
        importing, kept = await import_request(data)
        with Rejection(always("import")) as rejected:
            report = await hub.ask(endpoints.Prompt.STYLES_IMPORT, importing, timeout=30)
        if rejected:
            return await styles_page(request, hub, errors=rejected.errors, import_form=kept)
        if importing.dry_run:
            return await styles_page(request, hub, preview=report, import_form=kept)
        flash(request, import_summary(report))
        return Redirect("/styles")

    @get("/export")
    async def export_styles(self, request: Request, hub: HubClient) -> Response[str]:
        export_format: StyleFormat = (
            "a1111_csv" if request.query_params.get("format") == "a1111_csv" else "fooocus_json"
        )
        exported = await hub.ask(endpoints.Prompt.STYLES_EXPORT, ExportStyles(format=export_format))
        return Response(
            exported.content,
            media_type="text/csv" if export_format == "a1111_csv" else "application/json",
            headers={"Content-Disposition": f'attachment; filename="{exported.filename}"'},
        )
