"""Render types: list, import a ComfyUI workflow (analysed, then saved), edit as a new version, roll back,
delete, set the default, and a dry run that shows the workflow a generation would send."""

from __future__ import annotations

import asyncio
from functools import partial

import msgspec
from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.errors import ErrorCode
from contracts.messages.instances import ListInstances
from contracts.messages.render_types import (
    AnalyzeWorkflow,
    DeleteRenderType,
    GenerationParams,
    GetRenderType,
    GetRenderTypeHistory,
    ListRenderTypes,
    RenderDefaults,
    RenderType,
    RenderTypeHistory,
    ResolvedWorkflow,
    ResolveRenderType,
    RollbackRenderType,
    SaveRenderType,
    SetDefaultRenderType,
    WorkflowAnalysis,
)
from ui_service.capability import missing_everywhere
from ui_service.forms import (
    DEFAULT_FIELDS,
    EDIT_FIELDS,
    defaults_from_form,
    form_of,
    map_to_text,
    render_type_field,
    text_to_map,
    version_number,
    workflow_from_form,
    workflow_of,
)
from ui_service.hub_client import HubClient
from ui_service.pages import (
    Rejection,
    act_then_redirect,
    always,
    ask_then_redirect,
    flash,
    mapped_defaults,
    named_or,
    page,
    require_admin,
)

NEW_FIELDS = {"parameter_map", "name", "description", "note", "negative_prompt", *DEFAULT_FIELDS}


async def with_history(hub: HubClient, name: str) -> tuple[RenderType, RenderTypeHistory]:
    render_type, history = await asyncio.gather(
        hub.ask(endpoints.Registry.GET, GetRenderType(name=name)),
        hub.ask(endpoints.Registry.HISTORY, GetRenderTypeHistory(name=name)),
    )
    return render_type, history


def new_render_type_page(
    request: Request, form: dict[str, str], errors: dict | None = None, analysis: WorkflowAnalysis | None = None
) -> Template:
    return page("render_type_new.html", request, form=form, errors=errors or {}, analysis=analysis)


def analysed_form(form: dict[str, str], analysis: WorkflowAnalysis) -> dict[str, str]:
    """The import form filled with what the analysis proposes."""
    defaults = analysis.proposed_defaults
    return {
        **form,
        "parameter_map": map_to_text(analysis.proposed_map),
        **{name: str(getattr(defaults, name)) for name in DEFAULT_FIELDS},
        "negative_prompt": defaults.negative_prompt,
        "output_kind": analysis.output_kind,
    }


def new_render_type_of(form: dict[str, str]) -> SaveRenderType:
    return SaveRenderType(
        render_type=RenderType(
            name=form.get("name", "").strip(),
            description=form.get("description", ""),
            workflow=workflow_from_form(form),
            parameter_map=text_to_map(form.get("parameter_map", "")),
            defaults=defaults_from_form(form, RenderDefaults()),
            # From the form's select; the registry validates it when it decodes the request.
            output_kind=form.get("output_kind") or "image",  # type: ignore[arg-type]
        ),
        note=form.get("note", "") or "created in the admin UI",
    )


# Editing: the whole definition is sent back with the version the edit started from; the registry
# stores all of it as a new version or nothing (a stale version is a conflict, shown as such).
def edit_form_of(render_type: RenderType) -> dict[str, str]:
    defaults = render_type.defaults
    return {
        "name": render_type.name,
        "description": render_type.description,
        "enabled": "on" if render_type.enabled else "",
        "workflow": msgspec.json.format(msgspec.json.encode(render_type.workflow)).decode(),
        "parameter_map": map_to_text(render_type.parameter_map),
        "negative_prompt": defaults.negative_prompt,
        "version": str(render_type.version),
        **{name: str(getattr(defaults, name)) for name in DEFAULT_FIELDS},
    }


def edited_render_type_of(form: dict[str, str], name: str, current: RenderType) -> SaveRenderType:
    return SaveRenderType(
        render_type=msgspec.structs.replace(
            current,
            name=form.get("name", "").strip(),
            description=form.get("description", ""),
            enabled=form.get("enabled") == "on",
            workflow=workflow_from_form(form),
            parameter_map=text_to_map(form.get("parameter_map", "")),
            defaults=defaults_from_form(form, current.defaults),
            version=int(form.get("version") or current.version),
        ),
        original_name=name,
        note=form.get("note", "").strip(),
    )


async def edit_render_type_page(
    request: Request, hub: HubClient, name: str, form: dict[str, str] | None = None, errors: dict | None = None
) -> Template:
    render_type = await hub.ask(endpoints.Registry.GET, GetRenderType(name=name))
    return page(
        "render_type_edit.html",
        request,
        rt=render_type,
        form=form or edit_form_of(render_type),
        errors=errors or {},
    )


async def render_type_detail_page(
    request: Request, hub: HubClient, name: str, resolved: ResolvedWorkflow | None = None, errors: dict | None = None
) -> Template:
    render_type, history = await with_history(hub, name)
    return page(
        "render_type.html",
        request,
        rt=render_type,
        defaults=mapped_defaults(render_type),
        history=history.versions,
        parameter_map=map_to_text(render_type.parameter_map),
        resolved=resolved,
        resolved_json=msgspec.json.format(msgspec.json.encode(resolved.workflow)).decode() if resolved else "",
        errors=errors or {},
    )


async def delete_page(request: Request, hub: HubClient, name: str, error: str = "") -> Template:
    render_type, history = await with_history(hub, name)
    return page("render_type_delete.html", request, rt=render_type, versions=len(history.versions), error=error)


def dry_run_of(name: str, form: dict[str, str]) -> ResolveRenderType:
    return ResolveRenderType(
        render_type=name,
        params=GenerationParams(
            prompt=form.get("prompt", ""),
            negative_prompt=form.get("negative_prompt", ""),
            seed=int(form["seed"]) if form.get("seed", "").isdigit() else None,
        ),
    )


async def saved_flash(request: Request, hub: HubClient, saved: RenderType) -> None:
    """Says the render type was saved, and warns when no instance has a model it needs (it could not run)."""
    instances, _ = await hub.try_ask(endpoints.Dispatch.INSTANCES_LIST, ListInstances())
    missing = missing_everywhere(saved.requirements, instances.instances if instances else [])
    done = f"Saved render type {saved.name} (version {saved.version})."
    if missing:
        flash(request, f"{done} No ComfyUI instance has {', '.join(missing)}: it cannot run until one has.", "warn")
    else:
        flash(request, done)


async def saved_page(request: Request, hub: HubClient, saved: RenderType, *, changed: bool = True) -> Redirect:
    """After a save (new or edited): the render type's page, saying what the save did."""
    if changed:
        await saved_flash(request, hub, saved)
    else:
        flash(request, f"Nothing changed: {saved.name} stays at version {saved.version}.")
    return Redirect(f"/render-types/{saved.name}")


class RenderTypesController(Controller):
    path = "/render-types"
    guards = [require_admin]

    @get("/")
    async def render_types(self, request: Request, hub: HubClient) -> Template:
        (listed, error), (instances, _) = await asyncio.gather(
            hub.try_ask(endpoints.Registry.LIST, ListRenderTypes()),
            hub.try_ask(endpoints.Dispatch.INSTANCES_LIST, ListInstances()),
        )
        summaries = listed.render_types if listed else []
        views = instances.instances if instances else []
        missing = {rt.name: missing_everywhere(rt.requirements, views) for rt in summaries}
        return page("render_types.html", request, render_types=summaries, error=error, missing=missing)

    @post("/default")
    async def set_default_render_type(self, request: Request, hub: HubClient) -> Redirect:
        name = (await form_of(request)).get("name", "")
        choosing = SetDefaultRenderType(name=name)
        done = f"{name} is now the default render type."
        return await ask_then_redirect(
            request, hub, endpoints.Registry.SET_DEFAULT, choosing, target="/render-types", done=done
        )

    @get("/new")
    async def new_render_type(self, request: Request) -> Template:
        return new_render_type_page(request, {})

    @post("/analyze")
    async def analyze_workflow(self, request: Request, hub: HubClient) -> Template:
        form = await workflow_of(request)
        with Rejection(always("workflow")) as rejected:
            analysis = await hub.ask(
                endpoints.Registry.ANALYZE, AnalyzeWorkflow(workflow_json=form.get("workflow", ""))
            )
        if rejected:
            return new_render_type_page(request, form, rejected.errors)
        return new_render_type_page(request, analysed_form(form, analysis), analysis=analysis)

    @post("/save")
    async def save_render_type(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection(partial(render_type_field, fields=NEW_FIELDS)) as rejected:
            saved = await hub.ask(endpoints.Registry.SAVE, new_render_type_of(form))
        if rejected:
            # Back at step 2 with everything typed: the analysis is made again from the same workflow.
            analysis = await hub.ask(
                endpoints.Registry.ANALYZE, AnalyzeWorkflow(workflow_json=form.get("workflow", ""))
            )
            return new_render_type_page(request, form, rejected.errors, analysis)
        return await saved_page(request, hub, saved)

    @get("/{name:str}")
    async def render_type_detail(self, request: Request, hub: HubClient, name: str) -> Template:
        return await render_type_detail_page(request, hub, name)

    @get("/{name:str}/edit")
    async def edit_render_type(self, request: Request, hub: HubClient, name: str) -> Template:
        return await edit_render_type_page(request, hub, name)

    @post("/{name:str}/edit")
    async def update_render_type(self, request: Request, hub: HubClient, name: str) -> Template | Redirect:
        form = await workflow_of(request)
        with Rejection(partial(render_type_field, fields=EDIT_FIELDS | set(DEFAULT_FIELDS))) as rejected:
            current = await hub.ask(endpoints.Registry.GET, GetRenderType(name=name))
            saved = await hub.ask(endpoints.Registry.SAVE, edited_render_type_of(form, name, current))
        if rejected:
            return await edit_render_type_page(request, hub, name, form, rejected.errors)
        return await saved_page(request, hub, saved, changed=saved.version != int(form.get("version") or 0))

    @get("/{name:str}/delete")
    async def confirm_delete_render_type(self, request: Request, hub: HubClient, name: str) -> Template:
        return await delete_page(request, hub, name)

    @post("/{name:str}/delete")
    async def delete_render_type(self, request: Request, hub: HubClient, name: str) -> Template | Redirect:
        expected = (await form_of(request)).get("version", "")
        with Rejection() as rejected:
            deleted = await hub.ask(
                endpoints.Registry.DELETE,
                DeleteRenderType(name=name, expected_version=int(expected) if expected.isdigit() else None),
            )
        if rejected and rejected.code is not ErrorCode.NOT_FOUND:
            return await delete_page(request, hub, name, rejected.message)
        if rejected:
            return act_then_redirect(request, "/render-types", rejected, "")
        plural = "s" if deleted.versions_removed != 1 else ""
        flash(request, f"Deleted render type {deleted.name} and its {deleted.versions_removed} version{plural}.")
        return Redirect("/render-types")

    @post("/{name:str}/rollback")
    async def rollback_render_type(self, request: Request, hub: HubClient, name: str) -> Redirect:
        version = (await form_of(request)).get("version", "0")
        with Rejection() as rejected:
            rollback = RollbackRenderType(name=name, version=version_number(version))
            await hub.ask(endpoints.Registry.ROLLBACK, rollback)
        done = f"Rolled {name} back to version {version}."
        return act_then_redirect(request, f"/render-types/{name}", rejected, done)

    @post("/{name:str}/dry-run")
    async def dry_run_render_type(self, request: Request, hub: HubClient, name: str) -> Template:
        form = await form_of(request)
        with Rejection(named_or("prompt")) as rejected:
            resolved = await hub.ask(endpoints.Registry.RESOLVE, dry_run_of(name, form))
        if rejected:
            return await render_type_detail_page(request, hub, name, errors=rejected.errors)
        return await render_type_detail_page(request, hub, name, resolved=resolved)
