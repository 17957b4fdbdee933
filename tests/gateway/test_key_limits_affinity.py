"""The per-key running limit under the `pull_affinity` strategy (its own hub: one strategy per hub on a NATS)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_support import GatewayHub, gateway_hub
from test_key_limits import running_limit_holds

from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def gw(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHub]:
    strategy = {"HUB_DISPATCH_STRATEGY": "pull_affinity"}
    async with gateway_hub(nats_server.url, tmp_path_factory.mktemp("key-affinity"), services_env=strategy) as hub:
        yield hub


async def test_the_running_limit_holds_with_model_affinity_placement(gw: GatewayHub) -> None:
    await running_limit_holds(gw)
