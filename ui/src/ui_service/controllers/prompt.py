"""Prompt building and enhancement: the LLM's settings, a test of the LLM, and a preview of a built prompt."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.errors import HubError
from contracts.messages.render_types import ListRenderTypes
from contracts.messages.styles import (
    BuildPrompt,
    GetLlmSettings,
    ListLlmModels,
    ListStyles,
    SaveLlmSettings,
    TryEnhancement,
)
from ui_service.forms import form_of, llm_settings_from_form
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, always, field_of, flash, named_or, page, require_admin
from ui_service.picker import picker_styles


async def prompt_page(request: Request, hub: HubClient, **context: Any) -> Template:
    (settings, settings_error), (styles, _), (render_types, _) = await asyncio.gather(
        hub.try_ask(endpoints.Prompt.LLM_SETTINGS_GET, GetLlmSettings()),
        hub.try_ask(endpoints.Prompt.STYLES_LIST, ListStyles(include_disabled=False)),
        hub.try_ask(endpoints.Registry.LIST, ListRenderTypes(include_disabled=False)),
    )
    models: list[str] = []
    models_error = ""
    if settings is not None:
        listed, models_error = await hub.try_ask(endpoints.Prompt.LLM_MODELS, ListLlmModels())
        models = listed.models if listed else []
    context.setdefault("errors", {})
    context.setdefault("form", {})
    return page(
        "prompt.html",
        request,
        settings=settings,
        settings_error=settings_error,
        models=models,
        models_error=models_error,
        picker=picker_styles(styles.styles if styles else []),
        render_types=render_types.render_types if render_types else [],
        **context,
    )


def preview_field(error: HubError) -> str:
    """The preview form's input a prompt service error names."""
    return {"prompt": "preview_prompt", "negative_prompt": "preview_negative"}.get(field_of(error), "styles")


class PromptController(Controller):
    path = "/prompt"
    guards = [require_admin]

    @get("/")
    async def prompt_settings(self, request: Request, hub: HubClient) -> Template:
        return await prompt_page(request, hub)

    @post("/llm")
    async def save_llm(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection(named_or("llm")) as rejected:
            current = await hub.ask(endpoints.Prompt.LLM_SETTINGS_GET, GetLlmSettings())
            settings = llm_settings_from_form(form, current)
            await hub.ask(endpoints.Prompt.LLM_SETTINGS_SAVE, SaveLlmSettings(settings=settings))
        if rejected:
            return await prompt_page(request, hub, errors=rejected.errors)
        flash(request, "Saved the prompt enhancement settings.")
        return Redirect("/prompt")

    @post("/test")
    async def test_llm(self, request: Request, hub: HubClient) -> Template:
        form = await form_of(request)
        with Rejection(always("test_prompt")) as rejected:
            result = await hub.ask(endpoints.Prompt.LLM_TEST, TryEnhancement(prompt=form.get("test_prompt", "")), 90)
        if rejected:
            return await prompt_page(request, hub, form=form, errors=rejected.errors)
        return await prompt_page(request, hub, form=form, enhance=result)

    @post("/preview")
    async def preview_prompt(self, request: Request, hub: HubClient) -> Template:
        data = await request.form()
        form = {k: str(v) for k, v in data.items() if k != "styles"}
        chosen = [str(v) for v in data.getall("styles")] if "styles" in data else []
        form["styles"] = ",".join(chosen)
        with Rejection(preview_field) as rejected:
            built = await hub.ask(
                endpoints.Prompt.PREVIEW,
                BuildPrompt(
                    prompt=form.get("preview_prompt", ""),
                    negative_prompt=form.get("preview_negative", ""),
                    styles=chosen or None,
                    render_type=form.get("render_type") or None,
                ),
            )
        if rejected:
            return await prompt_page(request, hub, form=form, errors=rejected.errors)
        return await prompt_page(request, hub, form=form, built=built)
