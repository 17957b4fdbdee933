"""How the hub names its NATS subjects: the prefix, each service's health subject and queue group, the metrics scrape.

Request/reply subjects are declared once with their types in `contracts.endpoints`, and answered by a queue group
named after the owning service, so any number of replicas can run. Fan-out subjects are in `contracts.topics`,
JetStream subjects (jobs, generation events) in `contracts.streams`.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "hub"

SERVICES: Final = ("registry", "prompt", "dispatch", "stats", "gateway", "ui")


def health(service: str) -> str:
    """Answered by one replica of `service` (queue group); `$SRV.PING.<service>` reaches every replica."""
    return f"{PREFIX}.{service}.health"


# Scatter (no queue group, not a micro endpoint): every replica of every service answers with a MetricsReply;
# the gateway's /metrics gathers the answers that come within a short window.
METRICS_SCRAPE: Final = f"{PREFIX}.metrics.scrape"


def queue_group(service: str) -> str:
    return f"{PREFIX}-{service}"
