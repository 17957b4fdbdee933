"""Assembles the prompt service: its database and its NATS handlers."""

from contracts.runtime.config import Settings
from contracts.runtime.database import attach
from contracts.runtime.service import ServiceRuntime
from prompt_service import __version__, piccolo_conf


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings, version=__version__, description="Styles and LLM prompt enhancement")
    attach(runtime, piccolo_conf.DB, "prompt")
    return runtime
