"""The gateway's HTTP figures (requests, status and latency per route and per MCP method) and its /metrics page.

/metrics needs no API key (Prometheus has none) but answers only clients whose address is in HUB_METRICS_ALLOW
(default: loopback); the Host/Origin guard applies as to every other path. The page is gathered at each scrape
from every replica of every service over NATS (contracts.runtime.metrics).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from contracts.runtime import tracing
from contracts.runtime.metrics import ServiceMetrics

METRICS_PATH = "/metrics"
# The JSON-RPC method of an MCP request, put in the scope by GatewayGuard once it has read the body.
MCP_METHOD_SCOPE_KEY = "hub.mcp_method"
UNMATCHED = "unmatched"  # a path no handler serves: one label for all of them, so a scanner adds no series


class HttpMeter:
    """ASGI middleware around the whole gateway: every HTTP request counted by route, method and status, and
    timed (to its last byte; an SSE stream counts its whole life) by route; MCP requests also by JSON-RPC method."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self._app = app
        self._requests = metrics.counter("http_requests_total", "HTTP requests answered", ("route", "method", "status"))
        self._duration = metrics.histogram("http_request_duration_seconds", "HTTP request duration", ("route",))
        self._mcp_requests = metrics.counter(
            "mcp_requests_total", "MCP requests by JSON-RPC method", ("method", "status")
        )
        self._mcp_duration = metrics.histogram("mcp_request_duration_seconds", "MCP request duration", ("method",))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500  # what a request that fails before answering counts as

        async def send_noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            # A generation's trace starts here (or goes on from a caller's traceparent); named by route once routed.
            with tracing.span(scope["method"], kind="server", parent=tracing.http_parent(scope["headers"])):
                try:
                    await self._app(scope, receive, send_noting_status)
                finally:
                    tracing.rename(f"{scope['method']} {scope.get('path_template') or UNMATCHED}")
        finally:
            self._record(scope, str(status), time.perf_counter() - started)

    def _record(self, scope: dict[str, Any], status: str, elapsed: float) -> None:
        route = scope.get("path_template") or UNMATCHED
        self._requests.labels(route, scope["method"], status).inc()
        self._duration.labels(route).observe(elapsed)
        method = scope.get(MCP_METHOD_SCOPE_KEY)
        if method is not None:
            self._mcp_requests.labels(method, status).inc()
            self._mcp_duration.labels(method).observe(elapsed)


class MetricsAllow:
    """The client networks that may read /metrics."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self._networks = [ipaddress.ip_network(n) for n in networks]

    def allows(self, client: tuple[str, int] | None) -> bool:
        if client is None:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self._networks if network.version == address.version)


# The classic text format that generate_latest writes (litestar adds `; charset=utf-8`).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
