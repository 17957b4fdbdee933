"""Fair share survives a restart of the dispatchers (its own hub, so no other hub's dispatchers answer on this
NATS): both replicas are killed (kill -9) while the jobs wait and one is started again; nothing of the order lived
in them (job table, durable per-key consumers)."""

from __future__ import annotations

import pytest
from test_fair_share import positions, run_order, two_replica_hub

from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow


async def test_fair_share_holds_after_the_dispatchers_restart(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with two_replica_hub(nats_server.url, tmp_path_factory.mktemp("fair-restart"), "pull") as running:

        async def restart(_: dict[str, str]) -> None:
            for name in ("dispatch", "dispatch-2"):
                running.processes[name].kill()
            restarted = running.start("dispatch", HUB_DISPATCH_STRATEGY="pull")
            await restarted.wait_healthy(running.nc)

        order = await run_order(running, "fair-restart", [("A", 10, 1), ("B", 3, 1)], restart)
    # Nothing of the order lived in the killed processes: B's jobs still take turns with A's, each key in order.
    assert max(positions(order, "B")) < 7, order
    assert [label for label in order if label.startswith("A")] == [f"A{i}" for i in range(1, 11)], order
