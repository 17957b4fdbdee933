"""Assembles the dispatch service: its database and its NATS handlers."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.service import ServiceRuntime
from dispatch_service import __version__, piccolo_conf


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="ComfyUI pool, job queue and load balancing")
    attach(runtime, piccolo_conf.DB, "dispatch")
    return runtime
