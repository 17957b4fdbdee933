"""Shared pieces of the gateway tests: a hub (registry, prompt, dispatch, gateway processes) with one ComfyUI
double registered, and an API key created over NATS."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
from dispatch_support import Hub, add_instance, checkpoint_of
from doubles.comfyui import ComfyUIDouble
from harness import module_fixture

from contracts import endpoints
from contracts.messages.instances import ListInstances
from contracts.messages.keys import CreateApiKey, CreatedApiKey
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer

UPSCALE_MODEL = "RealESRGAN_x4plus.pth"  # what the shipped `upscale` render type loads

# What a raw MCP client sends with every POST to /mcp (JSON or an SSE stream back).
MCP_ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def mcp_initialize(version: str, *, request_id: int = 1, client: str = "raw") -> dict[str, Any]:
    """A raw JSON-RPC `initialize` request of this MCP protocol version, for tests that speak HTTP to /mcp."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": client, "version": "1"}},
    }


@dataclass
class GatewayHub:
    hub: Hub
    comfy: ComfyUIDouble
    base_url: str
    key: CreatedApiKey

    @property
    def nc(self):  # type: ignore[no-untyped-def]
        return self.hub.nc

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.secret}"}


@contextlib.asynccontextmanager
async def gateway_hub(  # type: ignore[no-untyped-def]
    nats_url: str, data_dir, *, services_env: dict[str, str] | None = None, **gateway_env: str
) -> AsyncIterator[GatewayHub]:
    """The hub; `services_env` goes to registry, prompt and dispatch, `gateway_env` to the gateway."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    hub = Hub(nats_url=nats_url, data_dir=data_dir, nc=nc)
    comfy: ComfyUIDouble | None = None
    try:
        await hub.start_all(**(services_env or {}))
        gateway = hub.start("gateway", **gateway_env)
        await gateway.wait_healthy(nc)
        base_url = f"http://127.0.0.1:{gateway.env['HUB_GATEWAY_PORT']}"
        models = {"checkpoints": [await checkpoint_of(nc)], "upscale_models": [UPSCALE_MODEL]}
        comfy = ComfyUIDouble(name="gw-comfy", models=models, work_seconds=0.2)
        await comfy.start()
        await add_instance(nc, comfy, "gw-comfy", slots=2)
        deadline = time.monotonic() + 15
        while True:
            listing = await call(nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
            if any(v.health.up for v in listing.instances if v.instance.name == "gw-comfy"):
                break
            assert time.monotonic() < deadline, listing
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=base_url) as http:
            deadline = time.monotonic() + 15
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        key = await call(nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="tests"))
        yield GatewayHub(hub=hub, comfy=comfy, base_url=base_url, key=key)
    finally:
        hub.stop_all()
        if comfy is not None:
            await comfy.stop()
        await nc.close()


@contextlib.asynccontextmanager
async def hub_on_own_nats(root: Path, **settings: Any) -> AsyncIterator[tuple[GatewayHub, NatsServer]]:
    """`gateway_hub(**settings)` on a nats-server of its own (store in root/jetstream, data in root/data), for a test
    that stops NATS or kills services where the other tests' hub must not feel it."""
    server = NatsServer(root / "jetstream", log_file=root / "nats.log")
    server.start()
    (root / "data").mkdir()
    try:
        async with gateway_hub(server.url, root / "data", **settings) as running:
            yield running, server
    finally:
        server.stop()


def gateway_fixture(
    folder: str, *, also: tuple[str, ...] = (), services_env: dict[str, str] | None = None, **gateway_env: str
) -> Any:
    """A test module's `gw` fixture: `gateway_hub` with these settings, and the services `also` names (e.g. stats)
    started and healthy beside it: `gw = gateway_fixture("webhooks", HUB_INPUT_URL_ALLOW="127.0.0.1")`."""

    @contextlib.asynccontextmanager
    async def opened(nats_url: str, data_dir: Path) -> AsyncIterator[GatewayHub]:
        async with gateway_hub(nats_url, data_dir, services_env=services_env, **gateway_env) as running:
            for service in also:
                await running.hub.start(service).wait_healthy(running.nc)
            yield running

    return module_fixture("gw", folder, opened)


async def sse_events(http: httpx.AsyncClient, gw: GatewayHub, job_id: str) -> list[tuple[str, str]]:
    """(event kind, event id) of every event the job's SSE stream sends, until it ends."""
    seen: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    async with http.stream("GET", f"{gw.base_url}/api/v1/generations/{job_id}/events", headers=gw.auth) as stream:
        if stream.status_code != 200:
            raise AssertionError(f"the event stream answered HTTP {stream.status_code}")
        async for line in stream.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
            elif "id" in fields:  # a blank line ends one event
                seen.append((fields.get("event", ""), fields["id"]))
                fields = {}
    return seen
