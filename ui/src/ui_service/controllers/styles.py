"""Styles: list and search, add, edit, delete, import (Fooocus JSON, A1111 CSV) and export."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template

from contracts import subjects
from contracts.envelope import Empty
from contracts.messages.styles import (
    DeleteStyle,
    ExportStyles,
    GetStyle,
    ImportReport,
    ImportStyles,
    ListStyles,
    SaveStyle,
    Style,
    StyleExport,
    StyleList,
)
from ui_service.forms import form_of, style_from_form, uploaded_text
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, act_then_redirect, always, flash, page, require_admin


async def styles_page(
    request: Request, hub: HubClient, form: dict[str, str] | None = None, errors: dict | None = None
) -> Template:
    listed, error = await hub.try_ask(subjects.Prompt.STYLES_LIST, ListStyles(), StyleList)
    query = request.query_params.get("q", "").strip().lower()
    styles = listed.styles if listed else []
    if query:
        styles = [s for s in styles if query in f"{s.name} {s.category} {s.positive}".lower()]
    return page(
        "styles.html",
        request,
        styles=styles,
        query=query,
        load_error=error,
        form=form or {"enabled": "on", "positive": "{prompt}"},
        errors=errors or {},
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


class StylesController(Controller):
    path = "/styles"
    guards = [require_admin]

    @get("/")
    async def styles(self, request: Request, hub: HubClient) -> Template:
        editing = request.query_params.get("edit")
        if not editing:
            return await styles_page(request, hub)
        style = await hub.ask(subjects.Prompt.STYLES_GET, GetStyle(name=editing), Style)
        return await styles_page(request, hub, edit_form_of(style))

    @post("/")
    async def save_style(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection() as rejected:
            style = style_from_form(form)
            saving = SaveStyle(style=style, original_name=form.get("original_name") or None)
            await hub.ask(subjects.Prompt.STYLES_SAVE, saving, Style)
        if rejected:
            return await styles_page(request, hub, form, rejected.errors)
        flash(request, f"Saved style {style.name}.")
        return Redirect("/styles")

    @post("/delete")
    async def delete_style(self, request: Request, hub: HubClient) -> Redirect:
        name = (await form_of(request)).get("name", "")
        with Rejection() as rejected:
            await hub.ask(subjects.Prompt.STYLES_DELETE, DeleteStyle(name=name), Empty)
        return act_then_redirect(request, "/styles", rejected, f"Deleted style {name}.")

    @post("/import")
    async def import_styles(self, request: Request, hub: HubClient) -> Template | Redirect:
        data = await request.form()
        content = await uploaded_text(data.get("file")) or str(data.get("content", ""))
        with Rejection(always("import")) as rejected:
            report = await hub.ask(
                subjects.Prompt.STYLES_IMPORT,
                ImportStyles(
                    format=str(data.get("format", "fooocus_json")),  # type: ignore[arg-type]
                    content=content,
                    on_conflict="update" if data.get("on_conflict") == "update" else "skip",
                    category=str(data.get("category", "")),
                ),
                ImportReport,
                timeout=30,
            )
        if rejected:
            return await styles_page(request, hub, errors=rejected.errors)
        skipped = f", skipped {len(report.skipped)}" if report.skipped else ""
        flash(request, f"Imported: {len(report.added)} added, {len(report.updated)} updated{skipped}.")
        return Redirect("/styles")

    @get("/export")
    async def export_styles(self, request: Request, hub: HubClient) -> Response[str]:
        export_format = "a1111_csv" if request.query_params.get("format") == "a1111_csv" else "fooocus_json"
        exported = await hub.ask(subjects.Prompt.STYLES_EXPORT, ExportStyles(format=export_format), StyleExport)
        return Response(
            exported.content,
            media_type="text/csv" if export_format == "a1111_csv" else "application/json",
            headers={"Content-Disposition": f'attachment; filename="{exported.filename}"'},
        )
