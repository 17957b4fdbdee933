"""The dispatch service's figures: the queue (read from the job table when a scrape asks) and each ComfyUI
instance as this replica sees it (up, slots, busy slots, model switches, failed attempts). Nothing here runs on
a job's path: the scheduler and the affinity keep plain counts, read at scrape time."""

from __future__ import annotations

import time

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from contracts.runtime.metrics import ServiceMetrics
from dispatch_service.pool import Pool
from dispatch_service.scheduler import Scheduler
from dispatch_service.store import JobStore


class DispatchMetrics:
    def __init__(self, metrics: ServiceMetrics, store: JobStore, pool: Pool, scheduler: Scheduler) -> None:
        self._metrics = metrics
        self._store = store
        self._pool = pool
        self._scheduler = scheduler
        # The queue is the hub's, not this replica's: every dispatcher reports the same figure (use max()).
        self._depth = metrics.gauge("queue_depth", "Jobs waiting for an instance (accepted or queued)")
        self._oldest = metrics.gauge("queue_oldest_wait_seconds", "How long the oldest waiting job has waited")
        self._depth_by_type = metrics.gauge(
            "queue_depth_by_render_type", "Jobs waiting for an instance, per render type", ("render_type",)
        )
        metrics.before_scrape(self.refresh_queue)
        metrics.on_scrape(self.instances)

    async def refresh_queue(self) -> None:
        waiting = await self._store.waiting_by_render_type()
        now = time.time()
        self._depth.set(sum(count for count, _ in waiting.values()))
        self._oldest.set(max((now - oldest for _, oldest in waiting.values()), default=0.0))
        self._depth_by_type.clear()  # a render type nobody waits for any more drops out
        for render_type, (count, _) in waiting.items():
            self._depth_by_type.labels(render_type).set(count)

    def instances(self) -> list[Metric]:
        name = self._metrics.name
        up = GaugeMetricFamily(
            name("instance_up"), "1 while the instance answers its health checks", labels=["instance"]
        )
        slots = GaugeMetricFamily(name("instance_slots"), "Jobs the instance may run at once", labels=["instance"])
        busy = GaugeMetricFamily(name("instance_busy_slots"), "Jobs this replica runs on it now", labels=["instance"])
        for instance, state in sorted(self._pool.states.items()):
            up.add_metric([instance], 1.0 if state.health.up else 0.0)
            slots.add_metric([instance], state.config.slots)
            busy.add_metric([instance], state.running)
        switches = CounterMetricFamily(
            name("instance_model_switches"), "Jobs that loaded models their instance did not hold", labels=["instance"]
        )
        for instance, count in sorted(self._scheduler.affinity.switches.items()):
            switches.add_metric([instance], count)
        switch_time = CounterMetricFamily(
            name("instance_model_switch_seconds"),
            "Seconds jobs spent loading models their instance did not hold (ComfyUI's loader nodes, measured)",
            labels=["instance"],
        )
        for instance, seconds in sorted(self._scheduler.affinity.switch_seconds.items()):
            switch_time.add_metric([instance], seconds)
        failures = CounterMetricFamily(
            name("instance_failures"), "Attempts that failed on the instance, by kind", labels=["instance", "kind"]
        )
        for (instance, kind), count in sorted(self._scheduler.failures.items()):
            failures.add_metric([instance, kind], count)
        return [up, slots, busy, switches, switch_time, failures]
