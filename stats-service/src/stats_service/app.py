"""Assembles the stats service: its database and its NATS handlers."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.service import ServiceRuntime
from stats_service import __version__, piccolo_conf


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Generation log, figures and image retention")
    attach(runtime, piccolo_conf.DB, "stats")
    return runtime
