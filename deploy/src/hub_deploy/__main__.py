"""`python -m hub_deploy up` starts the whole hub; `python -m hub_deploy health` checks a running one;
`python -m hub_deploy cluster` rehearses the clustered deployment (3 NATS servers, 2 replicas of each service);
`python -m hub_deploy probe <service>` is a container's health check (exit 0: this host's replica is healthy)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from contracts.runtime.bus import connect
from contracts.runtime.config import ConfigError, Settings, load_settings
from contracts.runtime.logs import configure_logging
from hub_deploy.probe import SERVICE_NAMES, probe
from hub_deploy.services import SERVICES, health_of, ping_all


async def report_health(settings: Settings) -> int:
    nc = await connect(settings, "hub-health", initial_wait_s=3)
    failures = 0
    try:
        for name, _module in SERVICES:
            try:
                reply = await health_of(nc, name)
                checks = ", ".join(f"{c.name}={'ok' if c.ok else c.detail}" for c in reply.checks)
                state = "ok" if reply.ok else "UNHEALTHY"
                failures += not reply.ok
                print(f"{name:<10} {state:<10} v{reply.version} up {reply.uptime_s:.0f}s  {checks}")
            except Exception as exc:
                failures += 1
                print(f"{name:<10} {'DOWN':<10} {exc}")
        replicas = await ping_all(nc)
        print(f"{len(replicas)} replica(s) answered $SRV.PING")
    finally:
        await nc.close()
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hub_deploy", description=__doc__)
    parser.add_argument("command", choices=["up", "health", "cluster", "probe"])
    parser.add_argument("service", nargs="?", choices=SERVICE_NAMES, help="probe: the service to check")
    parser.add_argument("--replicas", type=int, default=2, help="cluster: processes per service (default 2)")
    args = parser.parse_args()
    try:
        settings = load_settings("launcher")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "probe":
        if args.service is None:
            parser.error(f"probe needs the service to check: one of {', '.join(SERVICE_NAMES)}")
        healthy, reason = asyncio.run(probe(settings, args.service))
        print(reason, file=sys.stdout if healthy else sys.stderr)
        raise SystemExit(0 if healthy else 1)
    configure_logging(settings)
    if args.command == "up":
        from hub_deploy.supervisor import run_hub

        raise SystemExit(asyncio.run(run_hub(settings)))
    if args.command == "cluster":
        from hub_deploy.cluster import run_cluster

        raise SystemExit(asyncio.run(run_cluster(settings.data_dir / "cluster", replicas=args.replicas)))
    raise SystemExit(asyncio.run(report_health(settings)))


if __name__ == "__main__":
    main()
