"""Serving an ASGI app (gateway, UI) inside a service runtime, sharing its event loop and NATS connection.

Needs the `http` extra of genimage-contracts (uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn

from contracts.errors import ErrorCode, HubError
from contracts.runtime.service import ServiceRuntime


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service runtime owns SIGTERM/SIGINT and stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def serve_http(runtime: ServiceRuntime, app: Any, *, host: str, port: int) -> None:
    """Listen on host:port once the service is connected; stop listening (finishing requests) at stop."""
    server = _EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    )
    serving: asyncio.Task[None] | None = None

    async def listen() -> None:
        # uvicorn ends the whole process (sys.exit) when it cannot listen; a SystemExit in a task leaves the event
        # loop at once, so every service of the process would end without a word. Ended here, `start` reports it.
        with contextlib.suppress(SystemExit):
            await server.serve()

    async def start(_runtime: ServiceRuntime) -> None:
        nonlocal serving
        serving = asyncio.ensure_future(listen())
        while not server.started:
            if serving.done():
                raise HubError(
                    ErrorCode.UNAVAILABLE,
                    f"{runtime.name} could not listen on {host}:{port} (is the port in use?)",
                )
            await asyncio.sleep(0.02)
        runtime.log.info("http listening", url=f"http://{host}:{port}")

    async def stop(_runtime: ServiceRuntime) -> None:
        server.should_exit = True
        if serving is not None:
            await asyncio.wait({serving}, timeout=runtime.settings.shutdown_timeout_s + 5)

    async def check() -> str:
        if not server.started or server.should_exit:
            raise HubError(ErrorCode.UNAVAILABLE, "http server is not serving")
        return f"http://{host}:{port}"

    runtime.on_startup(start)
    runtime.on_shutdown(stop)
    runtime.health_check("http", check)
