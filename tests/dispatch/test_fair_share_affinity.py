"""Fair share between API keys under the `pull_affinity` strategy, with two dispatcher replicas (its own hub: one
strategy per hub on a NATS). Each replica holds a window of jobs; the windows fill, and their jobs start, by fair
share, so a key's burst does not starve another key here either."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispatch_support import Hub
from test_fair_share import positions, run_order, two_replica_hub

from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    data = tmp_path_factory.mktemp("fair-share-affinity")
    async with two_replica_hub(nats_server.url, data, "pull_affinity") as running:
        yield running


async def test_a_burst_of_one_key_does_not_starve_another_with_model_affinity(hub: Hub) -> None:
    order = await run_order(hub, "fair-affinity", [("A", 12, 1), ("B", 3, 1)])
    # Oldest first would start B's jobs after all twelve of A's.
    assert max(positions(order, "B")) < 7, order
