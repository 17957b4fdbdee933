"""Assembles the prompt service: its database (with the starter styles on first start), an HTTP client for
the LLM, and its NATS handlers."""

from __future__ import annotations

import httpx

from contracts import topics
from contracts.errors import HubError
from contracts.messages.styles import LlmSettings
from contracts.runtime.config import Settings
from contracts.runtime.database import attach, describe
from contracts.runtime.service import ServiceRuntime
from prompt_service import __version__, handlers, llm_settings, piccolo_conf, store, styles
from prompt_service.builder import EnhancementFigures, PromptBuilder
from prompt_service.llm import list_models


async def llm_reachable(http: httpx.AsyncClient, llm: LlmSettings) -> str:
    """What the health check says of a configured LLM, or an exception naming what is wrong."""
    where = f"{llm.provider} at {describe(llm.base_url)}"
    try:
        models = await list_models(http, llm, timeout_s=4)
    except HubError as exc:
        raise RuntimeError(f"{where} cannot be reached: {exc.info.message}") from None
    if llm.model not in models:
        listed = ", ".join(models[:8]) or "none"
        raise RuntimeError(f"{where} has no model {llm.model!r} (it has: {listed}); pull it or pick another")
    return f"{llm.provider} {llm.model} at {describe(llm.base_url)}"


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Styles and LLM prompt enhancement")

    async def load_starter_styles() -> None:
        added = await styles.load_starter_styles()
        if added:
            runtime.log.info("starter styles loaded", count=added)

    attach(runtime, piccolo_conf.DB, "prompt", seed=load_starter_styles)
    # One pooled client for every LLM call; each call sets its own timeout.
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=32, max_keepalive_connections=8))
    builder = PromptBuilder(
        http=http,
        request_timeout_s=settings.request_timeout_s,
        log=runtime.log,
        figures=EnhancementFigures(runtime.metrics),
    )

    async def close_http(_rt: ServiceRuntime) -> None:
        await http.aclose()

    async def llm_check() -> str:
        # Asks the LLM server for real (reachable, the model there); optional: a down LLM only disables enhancement.
        llm = await llm_settings.load_llm_settings()
        if not llm.model:
            return "LLM enhancement off: no model chosen"
        return await llm_reachable(http, llm)

    runtime.on_shutdown(close_http)
    runtime.health_check("llm", llm_check, optional=True)
    handlers.register(runtime, builder)
    runtime.subscribe(topics.Prompt.STYLES_CHANGED, store.forget_default_styles)  # another replica's change
    return runtime
