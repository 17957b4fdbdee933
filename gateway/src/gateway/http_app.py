"""The gateway's HTTP application (litestar). MCP, REST and image routes arrive with issue 9."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.response import Response

from contracts.runtime.service import ServiceRuntime


def create_http_app(runtime: ServiceRuntime) -> Litestar:
    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, object]:
        """Liveness: the process serves HTTP."""
        return {"service": runtime.name, "version": runtime.version, "instance_id": runtime.instance_id}

    @get("/readyz", sync_to_thread=False)
    def readyz() -> Response[dict[str, object]]:
        """Readiness: the gateway can reach the other services (NATS is connected)."""
        ready = runtime.nc.is_connected
        return Response({"ready": ready}, status_code=200 if ready else 503)

    return Litestar(route_handlers=[healthz, readyz], openapi_config=None, logging_config=None)
