"""The registry and prompt services, asked over NATS by the dispatcher (its outbound client)."""

from __future__ import annotations

import time

from contracts import endpoints
from contracts.endpoints import Endpoint, Req, Res
from contracts.envelope import Empty
from contracts.messages.render_types import ListRenderTypes, RenderTypeList, ResolvedWorkflow, ResolveRenderType
from contracts.messages.styles import BuildPrompt, BuiltPrompt
from contracts.runtime.bus import call
from contracts.runtime.service import ServiceRuntime


class NatsUpstream:
    """The registry and prompt services, asked over NATS.

    The render type list (for the default render type and instance compatibility) is cached until the
    registry announces a change, and for at most `RENDER_TYPES_TTL_S` in case an announcement was missed.
    """

    RENDER_TYPES_TTL_S = 30.0

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        self._render_types: RenderTypeList | None = None
        self._render_types_at = 0.0

    async def forget_render_types(self, _changed: Empty) -> None:
        """The registry announced a change (`topics.Registry.CHANGED`)."""
        self._render_types = None

    async def list_render_types(self) -> RenderTypeList:
        if self._render_types is None or time.monotonic() - self._render_types_at > self.RENDER_TYPES_TTL_S:
            fetched_at = time.monotonic()
            self._render_types = await self._call(endpoints.Registry.LIST, ListRenderTypes(include_disabled=True))
            self._render_types_at = fetched_at
        return self._render_types

    async def resolve(self, req: ResolveRenderType) -> ResolvedWorkflow:
        return await self._call(endpoints.Registry.RESOLVE, req)

    async def build_prompt(self, req: BuildPrompt) -> BuiltPrompt:
        # Enhancement may call a local LLM: allow it the LLM's own timeout on top of ours, and never ask twice.
        if req.enhance:
            return await self._call(endpoints.Prompt.BUILD, req, extra_s=120, ask_again=False)
        return await self._call(endpoints.Prompt.BUILD, req)

    async def _call(
        self, endpoint: Endpoint[Req, Res], message: Req, extra_s: float = 0, ask_again: bool = True
    ) -> Res:
        timeout = self._runtime.settings.request_timeout_s + extra_s
        return await call(self._runtime.nc, endpoint, message, timeout=timeout, ask_again=ask_again)
