"""Resolving a generation request's render type: which one, whether it may run, and its injected workflow."""

from __future__ import annotations

import random

from contracts.errors import ErrorCode, HubError
from contracts.messages.render_types import ResolvedWorkflow, ResolveRenderType
from registry_service.parameters import resolve
from registry_service.store import RenderTypeStore


class Resolver:
    def __init__(self, store: RenderTypeStore, rng: random.Random | None = None) -> None:
        self.store = store
        self.rng = rng or random.SystemRandom()

    async def resolve(self, request: ResolveRenderType) -> ResolvedWorkflow:
        if request.render_type is None:
            render_type = await self.store.for_resolve(None)
            if render_type is None:
                raise HubError(
                    ErrorCode.NOT_FOUND,
                    "no default render type is set; name one in `render_type` or make one the default",
                    field="render_type",
                    details={"valid": await self.store.names(enabled_only=True)},
                )
        else:
            found = await self.store.for_resolve(request.render_type)
            if found is None:
                raise await self._refusal(ErrorCode.NOT_FOUND, f"there is no render type named {request.render_type!r}")
            render_type = found
        if not render_type.enabled:
            raise await self._refusal(
                ErrorCode.INVALID_REQUEST, f"render type {render_type.name!r} is disabled by the admin"
            )
        return resolve(render_type, request.params, self.rng)

    async def _refusal(self, code: ErrorCode, problem: str) -> HubError:
        """`problem`, naming the render types that may be chosen instead."""
        valid = await self.store.names(enabled_only=True)
        return HubError(
            code,
            f"{problem}; choose one of: {', '.join(valid) if valid else 'none (no render type is enabled)'}",
            field="render_type",
            details={"valid": valid},
        )
