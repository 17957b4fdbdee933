"""The services of the hub and how to ask each of them for its health over NATS."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts import endpoints
from contracts.errors import HubError
from contracts.messages.health import HealthReply, HealthRequest
from contracts.runtime.bus import call

# (service name, module run with `python -m`), in start order: the dispatcher needs registry and prompt,
# the gateway and UI need everyone.
SERVICES: tuple[tuple[str, str], ...] = (
    ("registry", "registry_service"),
    ("prompt", "prompt_service"),
    ("stats", "stats_service"),
    ("dispatch", "dispatch_service"),
    ("gateway", "gateway"),
    ("ui", "ui_service"),
)


async def health_of(nc: NatsClient, service: str, timeout: float = 2.0) -> HealthReply:
    return await call(nc, endpoints.health(service), HealthRequest(), timeout=timeout)


async def wait_healthy(nc: NatsClient, service: str, timeout_s: float) -> HealthReply:
    """Ask until the service answers healthy; raise the last error after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            reply = await health_of(nc, service)
            if reply.ok:
                return reply
            problem = "; ".join(f"{c.name}: {c.detail}" for c in reply.checks if not c.ok)
        except HubError as exc:
            problem = str(exc)
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{service} is not healthy after {timeout_s:g} s: {problem}")
        await asyncio.sleep(0.1)


async def ping_all(nc: NatsClient, service: str | None = None, wait_s: float = 0.5) -> list[dict[str, Any]]:
    """Every running replica (of one service, or of all), through nats.micro's `$SRV.PING` discovery."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        replies.append(msgspec.json.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.PING.hub-{service}" if service else "$SRV.PING", b"", reply=inbox)
    await asyncio.sleep(wait_s)
    await sub.unsubscribe()
    return replies
