"""Pieces the benchmark scripts share (each runs as `python bench/<script>.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test harness starts the hub

import httpx2
from gateway_support import GatewayHub, gateway_hub
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from hub_deploy.natsserver import NatsServer, free_port

One = Callable[[int], Awaitable[None]]


@asynccontextmanager
async def hub_on_fresh_nats(
    prefix: str, *, monitor: bool = False, **gateway_hub_args: Any
) -> AsyncIterator[tuple[GatewayHub, NatsServer]]:
    """A nats-server (with its monitoring port when `monitor`) and the whole hub with its gateway, in a temporary
    folder named `prefix...`, all stopped and removed on exit. Services log warnings only."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        server = NatsServer(
            root / "nats" / "jetstream", log_file=root / "nats.log", monitor_port=free_port() if monitor else 0
        )
        server.start()
        try:
            async with gateway_hub(server.url, root / "data", HUB_LOG_LEVEL="warning", **gateway_hub_args) as gw:
                yield gw, server
        finally:
            server.stop()


async def run_concurrently(
    total: int, concurrency: int, one: One, *, errors: list[str] | None = None
) -> tuple[float, list[float]]:
    """Run `one(i)` for every i < total, `concurrency` at a time: (seconds it all took, each call's latency).
    With `errors`, a failing call is recorded there (and its latency counted) instead of ending the run."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            try:
                await one(i)
            except Exception as exc:
                if errors is None:
                    raise
                errors.append(f"{type(exc).__name__}: {exc}")  # counted, not fatal: the figures say how many
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def mcp_generate(
    stack: AsyncExitStack, base_url: str, auth: dict[str, str], sessions: int, word: str, *, timeout_s: float = 30.0
) -> One:
    """`one(i)`: a `generate_image` call (1 step, prompt "<word> i") that must complete, over a pool of `sessions`
    initialised MCP sessions (closed with `stack`)."""
    http = await stack.enter_async_context(
        httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(timeout_s, read=120))
    )
    free: asyncio.Queue[ClientSession] = asyncio.Queue()
    for _ in range(sessions):
        read, write = await stack.enter_async_context(streamable_http_client(f"{base_url}/mcp", http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        free.put_nowait(session)

    async def one(i: int) -> None:
        session = await free.get()
        try:
            result = await session.call_tool("generate_image", {"prompt": f"{word} {i}", "steps": 1})
            assert not result.is_error and result.structured_content["status"] == "completed", result
        finally:
            free.put_nowait(session)

    return one
