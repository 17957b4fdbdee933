"""Assembles the dispatch service: database, instance pool, job stream, scheduler and NATS handlers."""

from __future__ import annotations

from contracts import topics
from contracts.runtime.bus import ensure_stream
from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.outbound_url import UrlAllowlist
from contracts.runtime.service import ServiceRuntime
from contracts.runtime.storage import ObjectStoreOutputs, PreviewStore
from contracts.streams import EVENTS, JOBS
from dispatch_service import __version__, piccolo_conf
from dispatch_service.capabilities import CapabilityMemory
from dispatch_service.dispatcher import Dispatcher
from dispatch_service.events import EventPublisher
from dispatch_service.handlers import register
from dispatch_service.instance_sync import resync_instances
from dispatch_service.leases import SlotLeases
from dispatch_service.metrics import DispatchMetrics
from dispatch_service.pool import Pool
from dispatch_service.replica import take_identity
from dispatch_service.scheduler import Scheduler
from dispatch_service.store import JobStore
from dispatch_service.upstream import NatsUpstream


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="ComfyUI pool, job queue and load balancing")
    attach(runtime, piccolo_conf.DB, "dispatch")
    holder: dict[str, Dispatcher] = {}
    # Taken before NATS is reached; kept for the life of the process (the OS frees it when the process dies).
    identity = take_identity(settings.data_dir)
    upstream = NatsUpstream(runtime)
    # Subscribed from the connection on (before the start below), so no change announced meanwhile is missed.
    runtime.subscribe(topics.Registry.CHANGED, upstream.forget_render_types)

    async def start(rt: ServiceRuntime) -> None:
        js = rt.nc.jetstream()
        for spec in (JOBS, EVENTS):
            await ensure_stream(js, spec, settings.jetstream_replicas)
        memory = CapabilityMemory(js, replicas=settings.jetstream_replicas)
        await memory.open()
        pool = Pool(health_interval_s=settings.dispatch_health_interval_s, memory=memory)
        leases = SlotLeases(js, ttl_s=settings.dispatch_takeover_s, replicas=settings.jetstream_replicas, nc=rt.nc)
        await leases.open()
        storage = ObjectStoreOutputs(js, replicas=settings.jetstream_replicas)
        await storage.open()  # now, while every NATS server is up, not at the first output
        events = EventPublisher(js, rt.nc)
        store = JobStore()
        previews = PreviewStore(js, replicas=settings.jetstream_replicas)
        await previews.open()
        scheduler = Scheduler(
            settings, js, pool, leases, store, events, storage, nc=rt.nc, replica=identity.name, previews=previews
        )
        DispatchMetrics(rt.metrics, store, pool, scheduler)
        dispatcher = Dispatcher(
            nc=rt.nc,
            pool=pool,
            scheduler=scheduler,
            store=store,
            events=events,
            storage=storage,
            upstream=upstream,
            input_url_allow=UrlAllowlist.parse(settings.input_url_allow),
        )
        holder["dispatcher"] = dispatcher
        await dispatcher.reload_instances()
        await scheduler.open()
        await dispatcher.requeue_unqueued()
        register(rt, dispatcher)  # before start() returns, so the endpoints go live with the service
        rt.spawn(pool.health_loop(), name="health")
        rt.spawn(resync_instances(dispatcher), name="instances")
        rt.spawn(scheduler.run(), name="scheduler")

    async def stop(_rt: ServiceRuntime) -> None:
        dispatcher = holder.get("dispatcher")
        if dispatcher is not None:
            await dispatcher.scheduler.stop(settings.shutdown_timeout_s)
            await dispatcher.pool.close()

    runtime.on_startup(start)
    runtime.on_shutdown(stop)
    return runtime
