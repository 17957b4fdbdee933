"""Keeping each replica's instance pool in step with the stored instances: reloaded when a replica announces a
change (`topics.Dispatch.INSTANCES_CHANGED`) and now and then in case an announcement was missed."""

from __future__ import annotations

import asyncio

from contracts.runtime.logs import get_logger
from dispatch_service.dispatcher import Dispatcher

log = get_logger("dispatch")


async def reload_instances(dispatcher: Dispatcher) -> None:
    """Reload the pool; a failure is logged (the next change or resync tries again)."""
    try:
        await dispatcher.reload_instances()
    except Exception:
        log.exception("could not reload the instances")


async def resync_instances(dispatcher: Dispatcher, every_s: float = 30.0) -> None:
    """Reload the instances now and then, in case a change message was missed (NATS core is at most once)."""
    while True:
        await asyncio.sleep(every_s)
        await reload_instances(dispatcher)
