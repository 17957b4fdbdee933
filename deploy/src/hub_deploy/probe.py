"""The container health check: `python -m hub_deploy probe <service>` exits 0 when the service replica running on
this host is registered on NATS and the service answers healthy, 1 otherwise (with one line saying why).

A health request goes to any replica of the service (queue group), so the probe also looks for this host's own
replica among the `$SRV.PING` answers: its metadata names the host (in a container, the container's hostname).
"""

from __future__ import annotations

import asyncio
import socket

from nats.aio.client import Client as NatsClient

from contracts.runtime.config import Settings
from hub_deploy.services import SERVICES, health_of, ping_all

SERVICE_NAMES = [name for name, _module in SERVICES]


async def probe(settings: Settings, service: str, *, timeout_s: float = 4.0) -> tuple[bool, str]:
    """(healthy, the reason) for `service` on this host; never waits much longer than `timeout_s`."""
    try:
        return await asyncio.wait_for(_probe(settings, service, timeout_s), timeout_s + 1)
    except TimeoutError:
        return False, f"{service}: no answer within {timeout_s:g} s"


async def _probe(settings: Settings, service: str, timeout_s: float) -> tuple[bool, str]:
    nc = NatsClient()

    async def quiet(_exc: Exception) -> None:  # the one line printed says what went wrong
        return None

    try:
        # Few attempts, no reconnects: a health check must answer within its own timeout.
        await nc.connect(
            servers=settings.nats_servers,
            name=f"hub-probe-{service}",
            allow_reconnect=False,
            max_reconnect_attempts=1,  # nats-py tries each server twice, then gives up
            # nats-py annotates these int; it sleeps and waits for any number.
            reconnect_time_wait=0.1,  # type: ignore[arg-type]
            connect_timeout=min(2.0, timeout_s / 2),  # type: ignore[arg-type]
            error_cb=quiet,
        )
    except Exception as exc:
        return False, f"{service}: cannot reach NATS at {settings.nats_url} ({exc or type(exc).__name__})"
    try:
        host = socket.gethostname()
        replicas = await ping_all(nc, service, wait_s=0.3)
        here = [r for r in replicas if (r.get("metadata") or {}).get("host") == host]
        if not here:
            return False, f"{service}: no replica on host {host!r} is registered ({len(replicas)} elsewhere)"
        try:
            reply = await health_of(nc, service, timeout=max(0.5, timeout_s / 2))
        except Exception as exc:
            return False, f"{service}: health request failed: {exc}"
        failing = "; ".join(f"{c.name}: {c.detail}" for c in reply.checks if not c.ok)
        if not reply.ok:
            return False, f"{service}: unhealthy: {failing}"
        return True, f"{service}: ok ({len(here)} replica(s) on {host}, v{reply.version})"
    finally:
        await nc.close()
