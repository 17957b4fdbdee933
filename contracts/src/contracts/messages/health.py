from __future__ import annotations

from contracts.messages.base import Record, Request


class HealthRequest(Request):
    pass


class CheckResult(Record):
    name: str
    ok: bool
    detail: str = ""
    # An optional check's failure is shown but leaves the service healthy (a down LLM only disables enhancement).
    optional: bool = False


class HealthReply(Record):
    service: str
    version: str
    instance_id: str  # one id per running replica
    started_at: float  # epoch seconds
    uptime_s: float
    ok: bool
    checks: list[CheckResult] = []
    host: str = ""
    pid: int = 0


class MetricsReply(Record):
    """One replica's answer to a metrics scrape (subjects.METRICS_SCRAPE): its Prometheus exposition text."""

    service: str
    replica: str  # the replica's instance id
    exposition: str
