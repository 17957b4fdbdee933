"""NATS transport of the registry: one thin handler per subject, the work is done in the domain modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from contracts import endpoints
from contracts.messages import render_types
from contracts.runtime.service import ServiceRuntime
from registry_service.analysis import analyze_json
from registry_service.definition import summary
from registry_service.resolver import Resolver
from registry_service.store import RenderTypeStore

Notify = Callable[[], Awaitable[None]]


async def _nobody() -> None:
    return None


class RegistryHandlers:
    def __init__(self, store: RenderTypeStore, resolver: Resolver, on_change: Notify = _nobody) -> None:
        self.store = store
        self.resolver = resolver
        self.on_change = on_change  # told after every change, so other services can drop cached render types

    async def list(self, request: render_types.ListRenderTypes) -> render_types.RenderTypeList:
        listed = await self.store.all(include_disabled=request.include_disabled)
        return render_types.RenderTypeList(render_types=[summary(r) for r in listed])

    async def get(self, request: render_types.GetRenderType) -> render_types.RenderType:
        return await self.store.get(request.name)

    async def save(self, request: render_types.SaveRenderType) -> render_types.RenderType:
        saved = await self.store.save(
            request.render_type, original_name=request.original_name, changed_by=request.changed_by, note=request.note
        )
        await self.on_change()
        return saved

    async def delete(self, request: render_types.DeleteRenderType) -> render_types.DeletedRenderType:
        deleted = await self.store.delete(request.name, expected_version=request.expected_version)
        await self.on_change()
        return deleted

    async def set_default(self, request: render_types.SetDefaultRenderType) -> render_types.RenderType:
        changed = await self.store.set_default(request.name)
        await self.on_change()
        return changed

    async def history(self, request: render_types.GetRenderTypeHistory) -> render_types.RenderTypeHistory:
        return await self.store.history(request.name, include_snapshots=request.include_snapshots)

    async def rollback(self, request: render_types.RollbackRenderType) -> render_types.RenderType:
        rolled_back = await self.store.rollback(
            request.name, request.version, changed_by=request.changed_by, expected_version=request.expected_version
        )
        await self.on_change()
        return rolled_back

    async def analyze(self, request: render_types.AnalyzeWorkflow) -> render_types.WorkflowAnalysis:
        return analyze_json(request.workflow_json, request.parameter_map)

    async def resolve(self, request: render_types.ResolveRenderType) -> render_types.ResolvedWorkflow:
        return await self.resolver.resolve(request)

    def register(self, runtime: ServiceRuntime) -> None:
        runtime.endpoint(endpoints.Registry.LIST, self.list)
        runtime.endpoint(endpoints.Registry.GET, self.get)
        runtime.endpoint(endpoints.Registry.SAVE, self.save)
        runtime.endpoint(endpoints.Registry.DELETE, self.delete)
        runtime.endpoint(endpoints.Registry.SET_DEFAULT, self.set_default)
        runtime.endpoint(endpoints.Registry.HISTORY, self.history)
        runtime.endpoint(endpoints.Registry.ROLLBACK, self.rollback)
        runtime.endpoint(endpoints.Registry.ANALYZE, self.analyze)
        runtime.endpoint(endpoints.Registry.RESOLVE, self.resolve)
