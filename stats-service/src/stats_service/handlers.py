"""NATS transport of the stats service: each subject calls one domain function; the generation events feed the log."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.messages import stats
from contracts.runtime.service import ServiceRuntime
from stats_service import export, queries, retention
from stats_service.consumer import EVENT_LOG, EventLog

REPLY_OVERHEAD = 64 * 1024  # room in a reply for the envelope and the fields besides the exported content


def export_budget(nc: NatsClient) -> int:
    """Bytes of exported content one reply may carry: the server's message size limit less some room."""
    return max(nc.max_payload - REPLY_OVERHEAD, 64 * 1024)


def register(runtime: ServiceRuntime, scheduler: retention.RetentionScheduler, event_log: EventLog) -> None:
    async def query_log(req: stats.QueryLog) -> stats.LogPage:
        return await queries.query_log(req)

    async def get_generation(req: stats.GetGeneration) -> stats.GenerationRecord:
        return await queries.get_generation(req)

    async def query_figures(req: stats.QueryFigures) -> stats.Figures:
        return await queries.query_figures(req)

    async def export_log(req: stats.ExportLog) -> stats.LogExport:
        return await export.export_log(req, max_bytes=export_budget(runtime.nc))

    async def get_retention(_req: stats.GetRetention) -> stats.RetentionPolicy:
        return await retention.get_policy()

    async def save_retention(req: stats.SaveRetention) -> stats.RetentionPolicy:
        saved = await retention.save_policy(req.policy)
        scheduler.wake()
        return saved

    async def run_retention(req: stats.RunRetention) -> stats.RetentionReport:
        return await scheduler.run_now(dry_run=req.dry_run)

    runtime.endpoint(endpoints.Stats.LOG_QUERY, query_log)
    runtime.endpoint(endpoints.Stats.LOG_GET, get_generation)
    runtime.endpoint(endpoints.Stats.FIGURES, query_figures)
    runtime.endpoint(endpoints.Stats.EXPORT, export_log)
    runtime.endpoint(endpoints.Stats.RETENTION_GET, get_retention)
    runtime.endpoint(endpoints.Stats.RETENTION_SAVE, save_retention)
    runtime.endpoint(endpoints.Stats.RETENTION_RUN, run_retention)
    event_log.consumer = runtime.consume_batches(EVENT_LOG, event_log.record)
