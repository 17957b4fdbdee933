"""The per-key running limit under the `pull_affinity` strategy (its own hub: one strategy per hub on a NATS)."""

from __future__ import annotations

import pytest
from gateway_support import GatewayHub, gateway_fixture
from test_key_limits import running_limit_holds

pytestmark = pytest.mark.slow


gw = gateway_fixture("key-affinity", services_env={"HUB_DISPATCH_STRATEGY": "pull_affinity"})


async def test_the_running_limit_holds_with_model_affinity_placement(gw: GatewayHub) -> None:
    await running_limit_holds(gw)
