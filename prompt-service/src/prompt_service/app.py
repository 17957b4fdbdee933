"""Assembles the prompt service: its database (with the starter styles on first start), an HTTP client for
the LLM, and its NATS handlers."""

from __future__ import annotations

import httpx

from contracts.runtime.config import Settings
from contracts.runtime.database import attach, describe
from contracts.runtime.service import ServiceRuntime
from prompt_service import __version__, handlers, llm_settings, piccolo_conf, styles
from prompt_service.builder import PromptBuilder


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Styles and LLM prompt enhancement")

    async def load_starter_styles() -> None:
        added = await styles.load_starter_styles()
        if added:
            runtime.log.info("starter styles loaded", count=added)

    attach(runtime, piccolo_conf.DB, "prompt", seed=load_starter_styles)
    # One pooled client for every LLM call; each call sets its own timeout.
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=32, max_keepalive_connections=8))
    builder = PromptBuilder(http=http, request_timeout_s=settings.request_timeout_s, log=runtime.log)

    async def close_http(_rt: ServiceRuntime) -> None:
        await http.aclose()

    async def llm_check() -> str:
        # Reports the configuration without calling the LLM: a down LLM only disables enhancement.
        llm = await llm_settings.load_llm_settings()
        if not llm.model:
            return "LLM enhancement off: no model chosen"
        return f"{llm.provider} {llm.model} at {describe(llm.base_url)}"

    runtime.on_shutdown(close_http)
    runtime.health_check("llm", llm_check)
    handlers.register(runtime, builder)
    return runtime
