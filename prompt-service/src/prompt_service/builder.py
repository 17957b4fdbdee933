"""Building the final prompts: styles chosen and checked, the user's prompt rewritten by the LLM when asked,
then the styles applied (the rules are in `prompt_service.composition`).

LLM time is bounded: a request's `enhance_timeout_s`, or else the LLM settings' timeout capped a little
below HUB_REQUEST_TIMEOUT_S, so that the caller always gets its reply (un-enhanced, if need be) before its
own request times out.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from contracts.errors import ErrorCode, HubError
from contracts.messages.styles import (
    BuildPrompt,
    BuiltPrompt,
    EnhanceResult,
    ListLlmModels,
    LlmModels,
    LlmSettings,
    TraceStep,
    TryEnhancement,
)
from contracts.runtime.database import describe
from contracts.runtime.metrics import ServiceMetrics
from prompt_service import llm, styles
from prompt_service.composition import compose, select_styles
from prompt_service.llm_settings import load_llm_settings, resolved


class EnhancementFigures:
    """LLM rewrites of prompts being built: how many, how long, and how many fell back to the prompt as typed."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._enhancements = metrics.counter(
            "llm_enhancements_total", "Prompt enhancements asked of the LLM; `fallback`: the prompt was used as typed",
            ("outcome",),
        )  # fmt: skip
        self._seconds = metrics.histogram("llm_enhancement_seconds", "Time the LLM took (or was given)", ("outcome",))

    def record(self, enhancement: EnhanceResult) -> None:
        outcome = "ok" if enhancement.ok else "fallback"
        self._enhancements.labels(outcome).inc()
        self._seconds.labels(outcome).observe(enhancement.elapsed_ms / 1000)


REPLY_MARGIN_S = 1.5  # left of the caller's request timeout for everything but the LLM
MIN_LLM_TIME_S = 0.5


@dataclass
class PromptBuilder:
    http: httpx.AsyncClient
    request_timeout_s: float
    log: structlog.stdlib.BoundLogger
    figures: EnhancementFigures | None = None

    def llm_time(self, settings: LlmSettings, requested: float | None = None) -> float:
        if requested is not None:
            return requested
        return max(MIN_LLM_TIME_S, min(settings.timeout_s, self.request_timeout_s - REPLY_MARGIN_S))

    async def build(self, req: BuildPrompt) -> BuiltPrompt:
        if not req.prompt.strip():
            raise HubError(ErrorCode.INVALID_REQUEST, "the prompt is blank; describe the image", field="prompt")
        # Styles first: a wrong style name fails at once, before any time is spent on the LLM.
        try:
            selection = select_styles(req.styles, await styles.candidates(req.styles), req.render_type)
        except HubError:
            # The same error again, now listing every usable style of the whole library.
            selection = select_styles(req.styles, await styles.all_styles(), req.render_type)
        trace: list[TraceStep] = []
        text = req.prompt.strip()
        enhancement: EnhanceResult | None = None
        if req.enhance:
            settings = await load_llm_settings()
            enhancement = await llm.enhance(self.http, settings, text, self.llm_time(settings, req.enhance_timeout_s))
            if self.figures is not None:
                self.figures.record(enhancement)
            if enhancement.ok:
                text = enhancement.enhanced
                trace.append(
                    TraceStep(
                        step="enhance",
                        detail=f"rewritten by {settings.model} ({settings.provider}) in {enhancement.elapsed_ms:g} ms",
                    )
                )
            else:
                self.log.warning(
                    "prompt enhancement failed, using the prompt as typed",
                    error=enhancement.error,
                    model=settings.model,
                    elapsed_ms=enhancement.elapsed_ms,
                )
                trace.append(
                    TraceStep(step="enhance_skipped", detail=f"{enhancement.error}; the prompt was used as typed")
                )
        composed = compose(text, req.negative_prompt, selection.styles)
        return BuiltPrompt(
            positive=composed.positive,
            negative=composed.negative,
            styles_applied=[s.name for s in selection.styles],
            enhanced=bool(enhancement and enhancement.ok),
            trace=[*trace, *selection.trace, *composed.trace],
            enhancement_error=enhancement.error if enhancement else None,
            user_prompt=req.prompt,
            enhanced_prompt=text if enhancement and enhancement.ok else "",
            llm_model=enhancement.model if enhancement and enhancement.ok else "",
            render_type=req.render_type,
        )

    async def _settings(self, trial: LlmSettings | None) -> LlmSettings:
        """The stored settings, or settings to try (checked like a save, the stored key kept if not given)."""
        stored = await load_llm_settings()
        return stored if trial is None else resolved(trial, stored)

    async def test(self, req: TryEnhancement) -> EnhanceResult:
        settings = await self._settings(req.settings)
        return await llm.enhance(self.http, settings, req.prompt, self.llm_time(settings))

    async def models(self, req: ListLlmModels) -> LlmModels:
        settings = await self._settings(req.settings)
        names = await llm.list_models(self.http, settings, self.llm_time(settings))
        return LlmModels(models=names, provider=settings.provider, base_url=describe(settings.base_url))
