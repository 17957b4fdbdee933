"""Assembles the registry service: its database, the shipped render types, and its NATS handlers."""

from contracts import topics
from contracts.envelope import Empty
from contracts.runtime.bus import publish
from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.service import ServiceRuntime
from registry_service import __version__, piccolo_conf
from registry_service.handlers import RegistryHandlers
from registry_service.resolver import Resolver
from registry_service.seeds import load_seed_render_types
from registry_service.store import RenderTypeStore


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Render types and ComfyUI workflows")
    store = RenderTypeStore()

    async def announce_change() -> None:
        await publish(runtime.nc, topics.Registry.CHANGED, Empty())

    handlers = RegistryHandlers(store, Resolver(store), on_change=announce_change)

    async def load_shipped_render_types() -> None:
        loaded = await store.seed(load_seed_render_types(), changed_by="registry", note="shipped with the hub")
        if loaded:
            runtime.log.info("shipped render types loaded", render_types=loaded)

    attach(runtime, piccolo_conf.DB, "registry", seed=load_shipped_render_types)

    async def describe_render_types() -> str:
        # Informative only: a registry without render types is a valid (if unusable) configuration.
        render_types = await store.all()
        enabled = sum(1 for r in render_types if r.enabled)
        default = next((r.name for r in render_types if r.is_default), "none")
        return f"{len(render_types)} render types, {enabled} enabled, default: {default}"

    runtime.health_check("render_types", describe_render_types)

    handlers.register(runtime)
    runtime.subscribe(topics.Registry.CHANGED, store.forget_announced)  # another replica's change
    return runtime
