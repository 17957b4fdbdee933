"""The stats service's figures: generations by final status, render type and API key, their queue wait and run
time, and retention runs. Counted once per job when the log row first becomes final (after the commit), so a
redelivered event counts nothing twice, and nothing is added to the dispatcher's path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import HubError
from contracts.messages.keys import ListApiKeys
from contracts.messages.stats import RetentionReport
from contracts.runtime.bus import call
from contracts.runtime.metrics import ServiceMetrics
from stats_service.merge import JobState

NO_KEY = "none"  # a job made without an API key (the admin UI)
KEY_LIST_REFRESH_S = 30.0  # an unknown key id asks the gateway for the names at most this often
KEY_LIST_TIMEOUT_S = 1.0  # the event consumer waits for the answer: never long


class KeyNames:
    """API key names by id, from the gateway (the label is the name an admin gave, never the secret)."""

    def __init__(self, nc: Callable[[], NatsClient]) -> None:
        self._nc = nc  # the runtime's connection, made at start
        self._names: dict[str, str] = {}
        self._asked_at = float("-inf")

    async def name_of(self, key_id: str | None) -> str:
        if key_id is None:
            return NO_KEY
        if key_id not in self._names and time.monotonic() - self._asked_at > KEY_LIST_REFRESH_S:
            self._asked_at = time.monotonic()
            try:
                listing = await call(
                    self._nc(),
                    endpoints.Gateway.KEYS_LIST,
                    ListApiKeys(include_revoked=True),
                    timeout=KEY_LIST_TIMEOUT_S,
                )
            except HubError:
                pass  # the gateway is away: the id stands in for the name until the next refresh
            else:
                self._names = {key.key_id: key.name for key in listing.keys}
        return self._names.get(key_id, key_id)


class StatsMetrics:
    def __init__(self, metrics: ServiceMetrics, nc: Callable[[], NatsClient]) -> None:
        self._keys = KeyNames(nc)
        self._generations = metrics.counter(
            "generations_total", "Generations that ended, by status, render type and API key name",
            ("status", "render_type", "key"),
        )  # fmt: skip
        self._queue_wait = metrics.histogram(
            "queue_wait_seconds", "Time a generation waited for an instance", ("render_type", "instance")
        )
        self._run = metrics.histogram(
            "run_seconds", "Time the attempt that produced the result ran on its instance", ("render_type", "instance")
        )
        self._retention_runs = metrics.counter("retention_runs_total", "Retention runs", ("trigger", "outcome"))
        self._retention_bytes = metrics.counter("retention_bytes_removed_total", "Bytes of output files removed")
        self._retention_images = metrics.counter("retention_images_removed_total", "Output files removed")
        self._retention_rows = metrics.counter("retention_log_rows_removed_total", "Generation log rows removed")

    async def finished(self, states: Iterable[JobState]) -> None:
        """Count jobs whose log row just became final."""
        for state in states:
            render_type = state.render_type or "unknown"  # the `accepted` event has not come yet
            key = await self._keys.name_of(state.api_key_id)
            self._generations.labels(state.status, render_type, key).inc()
            instance = state.instance or "none"
            if state.queue_wait_ms is not None:
                self._queue_wait.labels(render_type, instance).observe(state.queue_wait_ms / 1000)
            if state.run_ms is not None:
                self._run.labels(render_type, instance).observe(state.run_ms / 1000)

    def retention_ran(self, report: RetentionReport) -> None:
        if report.dry_run:
            return
        self._retention_runs.labels(report.trigger, "failed" if report.error else "ok").inc()
        self._retention_bytes.inc(report.bytes_freed)
        self._retention_images.inc(report.images_removed)
        self._retention_rows.inc(report.log_rows_removed)
