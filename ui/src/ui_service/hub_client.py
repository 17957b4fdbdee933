"""The admin UI's way to the other services: NATS requests, the shared output store and health checks.

One HubClient per app, kept in `app.state` and handed to the controllers by dependency injection
(`provide_hub`), so no page captures the service runtime in a closure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.datastructures import State

from contracts import endpoints, subjects
from contracts.endpoints import Endpoint, Req, Res
from contracts.errors import HubError
from contracts.messages.health import HealthReply, HealthRequest
from contracts.runtime.bus import call
from contracts.runtime.service import ServiceRuntime
from contracts.runtime.storage import ObjectStoreOutputs


class HubClient:
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.log = runtime.log
        self._outputs: ObjectStoreOutputs | None = None

    @property
    def nc(self) -> Any:
        return self.runtime.nc

    def outputs(self) -> ObjectStoreOutputs:
        """One store handle for the app (opening the bucket asks JetStream; not once per request)."""
        if self._outputs is None:
            self._outputs = ObjectStoreOutputs(self.runtime.nc.jetstream())
        return self._outputs

    async def ask(self, endpoint: Endpoint[Req, Res], message: Req, timeout: float = 5.0) -> Res:
        return await call(self.runtime.nc, endpoint, message, timeout=timeout)

    async def try_ask(self, endpoint: Endpoint[Req, Res], message: Req) -> tuple[Res, str] | tuple[None, str]:
        """The reply, or None and the error's message (for a page that still shows the rest)."""
        try:
            return await self.ask(endpoint, message), ""
        except HubError as exc:
            return None, exc.info.message

    async def service_health(self) -> list[tuple[str, HealthReply | None, str]]:
        async def one(service: str) -> tuple[str, HealthReply | None, str]:
            reply, error = await self._health(service)
            return service, reply, error

        return list(await asyncio.gather(*(one(service) for service in subjects.SERVICES)))

    async def _health(self, service: str) -> tuple[HealthReply | None, str]:
        try:
            return await call(self.runtime.nc, endpoints.health(service), HealthRequest(), timeout=2), ""
        except HubError as exc:
            return None, exc.info.message


def provide_hub(state: State) -> HubClient:
    return state.hub
