"""Fixtures of the admin UI tests: the services the UI talks to plus the UI for a module, a browser, a signed-in
admin. A module that needs other settings defines its own `hub`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispatch_support import Hub
from playwright.async_api import Browser
from ui_support import Admin, chromium, signed_in_admin, ui_hub

from hub_deploy.natsserver import NatsServer


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    async with ui_hub(nats_server.url, tmp_path_factory.mktemp("ui")) as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def admin(hub: Hub) -> AsyncIterator[Admin]:
    async with signed_in_admin(hub.ui_url) as signed_in:  # type: ignore[attr-defined]
        yield signed_in
