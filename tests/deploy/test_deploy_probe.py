"""`python -m hub_deploy probe <service>`, the containers' health check: exit 0 only when this host's replica of
the service is registered on NATS and the service answers healthy; a clear line and exit 1 otherwise."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from harness import hub_env
from nats.aio.client import Client as NatsClient

from hub_deploy.natsserver import NatsServer, free_port


def run_probe(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hub_deploy", "probe", *args], env=env, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


async def test_the_probe_passes_for_a_running_service_and_fails_for_a_missing_one(
    start_service, nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    registry = start_service("registry", data_dir=tmp_path / "data")
    await registry.wait_healthy(nc)
    env = hub_env(nats_server.url, tmp_path / "probe")

    code, output, _ = await asyncio.to_thread(run_probe, env, "registry")
    assert code == 0, output
    assert output.startswith("registry: ok (1 replica(s) on ") and output.count("\n") == 1

    code, output, took = await asyncio.to_thread(run_probe, env, "stats")  # nothing runs it
    assert code == 1 and "stats: no replica on host" in output, output
    assert took < 10

    assert await registry.stop() == 0
    code, output, _ = await asyncio.to_thread(run_probe, env, "registry")
    assert code == 1 and "registry: no replica" in output, output


def test_the_probe_fails_fast_when_nats_is_unreachable(tmp_path: Path) -> None:
    env = hub_env(f"nats://127.0.0.1:{free_port()}", tmp_path / "data")
    code, output, took = run_probe(env, "gateway")
    assert code == 1 and "gateway: " in output and "cannot reach NATS" in output, output
    assert took < 10  # inside the HEALTHCHECK's timeout, not the services' 30 s start-up wait


def test_the_probe_names_the_services_it_knows(tmp_path: Path) -> None:
    env = hub_env(f"nats://127.0.0.1:{free_port()}", tmp_path / "data")
    code, output, _ = run_probe(env)
    assert code == 2 and "probe needs the service to check" in output and "registry" in output, output
    code, output, _ = run_probe(env, "nosuch")
    assert code == 2 and "invalid choice: 'nosuch'" in output, output
