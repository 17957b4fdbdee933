"""Assembles the stats service: its database, the event consumer, the retention schedule and its NATS handlers."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.service import ServiceRuntime
from stats_service import __version__, handlers, piccolo_conf, retention
from stats_service.consumer import EventLog
from stats_service.metrics import StatsMetrics
from stats_service.outputs import output_remover


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Generation log, figures and image retention")
    attach(runtime, piccolo_conf.DB, "stats")
    figures = StatsMetrics(runtime.metrics, lambda: runtime.nc)
    event_log = EventLog(figures)
    scheduler = retention.RetentionScheduler(
        output_remover(runtime), runtime.log.bind(task="retention"), on_report=figures.retention_ran
    )
    handlers.register(runtime, scheduler, event_log)

    async def start_background(_runtime: ServiceRuntime) -> None:
        await retention.get_policy()  # creates the policy row: the schedule counts from the first start
        runtime.spawn(scheduler.run_forever(), name="retention")

    runtime.on_startup(start_background)
    runtime.health_check("events", event_log.health)
    return runtime
