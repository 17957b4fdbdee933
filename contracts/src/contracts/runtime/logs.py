"""The one logging setup: structlog, JSON in production, readable on a terminal.

Standard-library loggers (uvicorn, nats, piccolo) go through the same processors, and values of keys that
look like secrets are masked, so a password or API key never reaches a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from contracts.runtime import tracing
from contracts.runtime.config import Settings

_SECRET_KEY = re.compile(r"(password|secret|token|api_key|auth|authorization|credential)", re.IGNORECASE)


def _mask_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if key != "event" and _SECRET_KEY.search(key) and value not in (None, ""):
            event[key] = "***"
    return event


def configure_logging(settings: Settings) -> structlog.stdlib.BoundLogger:
    use_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *tracing.log_processors(),  # trace and span ids, only while tracing is on (configure it first)
        _mask_secrets,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if use_json else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Libraries that are chatty at INFO about things we log ourselves.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(service=settings.service)
    return structlog.stdlib.get_logger(settings.service)


def _identity(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
