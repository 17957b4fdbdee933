"""The example deployment files are valid for the tools that read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hub_deploy.natsserver import nats_server_binary

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("nats-*.conf"))


def test_the_cluster_example_has_three_servers_routing_to_each_other() -> None:
    assert [c.name for c in CONFIGS] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]
    for index, config in enumerate(CONFIGS, start=1):
        text = config.read_text()
        others = {f"nats://nats-{j}:6222" for j in (1, 2, 3) if j != index}
        assert all(f'"{route}"' in text for route in others), config
        assert f"nats://nats-{index}:6222" not in text, f"{config} routes to itself"
        assert f'server_name: "hub-nats-{index}"' in text


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_nats_server_accepts_the_example_config(config: Path) -> None:
    checked = subprocess.run(
        [str(nats_server_binary()), "-c", str(config), "-t"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
