"""Helpers of the prompt-service tests: a service process shared by a test module, and short request calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import nats
from aiohttp import web
from doubles.ollama import OllamaDouble
from harness import ServiceProcess, hub_env, module_fixture
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.endpoints import Endpoint
from contracts.errors import HubError
from contracts.messages.styles import (
    BuildPrompt,
    BuiltPrompt,
    DeleteStyle,
    ListStyles,
    LlmSettings,
    SaveLlmSettings,
    SaveStyle,
    Style,
)
from contracts.runtime.bus import call, request

P = endpoints.Prompt


@asynccontextmanager
async def prompt_service(nats_url: str, data_dir: Path, **env: str) -> AsyncIterator[ServiceProcess]:
    """A prompt-service process on its own data folder, healthy on entry, stopped (SIGTERM) on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # The registry answers which render types exist (a style limited to render types names only those).
    registry = ServiceProcess(name="registry", env=hub_env(nats_url, data_dir), log_path=data_dir / "registry.log")
    proc = ServiceProcess(name="prompt", env=hub_env(nats_url, data_dir, **env), log_path=data_dir / "prompt.log")
    registry.start()
    proc.start()
    try:
        client = await nats.connect(nats_url)
        try:
            await proc.wait_healthy(client)
            await registry.wait_healthy(client)
        finally:
            await client.close()
        yield proc
        assert await proc.stop() == 0, proc.log()
    finally:
        proc.kill()
        registry.kill()


def prompt_fixture(folder: str, **env: str) -> Any:
    """A test module's `service` fixture: `prompt_service` with these settings, for all the module's tests."""
    return module_fixture("service", folder, partial(prompt_service, **env))


async def failure(nc: NatsClient, endpoint: Endpoint[Any, Any], message: msgspec.Struct) -> HubError:
    """The error a request is answered with; fails the test when it succeeds."""
    try:
        result = await request(nc, endpoint.subject, message, dict[str, Any])
    except HubError as exc:
        return exc
    raise AssertionError(f"{endpoint.subject} succeeded but should have failed: {result}")


async def styles(nc: NatsClient, **filters: Any) -> list[Style]:
    return (await call(nc, P.STYLES_LIST, ListStyles(**filters))).styles


async def replace_styles(nc: NatsClient, new: list[Style]) -> None:
    """Delete every style, then save `new`: each test starts from the library it describes."""
    for style in await styles(nc):
        await call(nc, P.STYLES_DELETE, DeleteStyle(name=style.name))
    for style in new:
        await call(nc, P.STYLES_SAVE, SaveStyle(style=style))


async def build(
    nc: NatsClient, prompt: str, *, endpoint: Endpoint[BuildPrompt, BuiltPrompt] = P.BUILD, **fields: Any
) -> BuiltPrompt:
    return await call(nc, endpoint, BuildPrompt(prompt=prompt, **fields))


async def built_with(nc: NatsClient, library: list[Style], prompt: str, **fields: Any) -> BuiltPrompt:
    """`prompt` built with every style of `library`, in its order, after the library became exactly `library`."""
    await replace_styles(nc, library)
    return await build(nc, prompt, styles=[style.name for style in library], **fields)


async def save_llm(nc: NatsClient, **fields: Any) -> LlmSettings:
    return await call(nc, P.LLM_SETTINGS_SAVE, SaveLlmSettings(settings=LlmSettings(**fields)))


class RecordingOllama(OllamaDouble):
    """The Ollama double that also keeps the headers of each request (to see the Bearer key)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.headers: list[tuple[str, dict[str, str]]] = []

    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.headers.append((request.path, dict(request.headers)))
        return await super()._faults(request, handler)
