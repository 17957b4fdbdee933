"""Fixtures of the gateway tests: the whole hub with its gateway for a module, and a REST client with the test's
API key. A module that needs other settings defines its own `gw`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import GatewayHub, gateway_fixture

gw = gateway_fixture("gateway")


@pytest.fixture
async def api(gw: GatewayHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as client:
        yield client
