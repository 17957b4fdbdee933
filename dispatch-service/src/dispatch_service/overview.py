"""What the pool does now, for the admin's dashboard: per instance the jobs it runs, the models it holds and its
share of the recent work; per API key its running and waiting jobs. Read from the job table (every replica's jobs)
and the models bucket as this replica follows it; nothing here is on a job's path."""

from __future__ import annotations

import time

from contracts.messages.jobs import InstanceWork, KeyWork, RunningJob, SchedulingView
from contracts.runtime.config import Settings
from dispatch_service.affinity import ModelMemory
from dispatch_service.pool import Pool
from dispatch_service.store import JobStore

SHARE_WINDOW_S = 3600.0  # an instance's share of the work: of the jobs started within the last hour


async def scheduling_view(settings: Settings, store: JobStore, pool: Pool, memory: ModelMemory) -> SchedulingView:
    running = await store.running_now()
    waiting = await store.waiting_by_key()
    started = await store.started_by_instance(time.time() - SHARE_WINDOW_S)
    names = sorted(set(pool.states) | {job.instance for job in running if job.instance})
    total = sum(started.get(name, 0) for name in names)  # shares of the instances listed (a removed one is not)
    instances = [
        InstanceWork(
            instance=name,
            running=[
                RunningJob(job_id=j.job_id, render_type=j.render_type, api_key_id=j.api_key_id, started_at=j.started_at)
                for j in running
                if j.instance == name
            ],
            loaded_models=sorted(memory.loaded(name)),
            started_recently=started.get(name, 0),
            share=started.get(name, 0) / total if total else 0.0,
        )
        for name in names
    ]
    running_by_key: dict[str | None, int] = {}
    for job in running:
        running_by_key[job.api_key_id] = running_by_key.get(job.api_key_id, 0) + 1
    keys = [
        KeyWork(api_key_id=key, running=running_by_key.get(key, 0), waiting=waiting.get(key, 0))
        for key in sorted(set(running_by_key) | set(waiting), key=lambda k: (k is None, k or ""))
    ]
    return SchedulingView(
        instances=instances,
        keys=keys,
        share_window_s=SHARE_WINDOW_S,
        strategy=settings.dispatch_strategy,
        fair_share=settings.dispatch_fair_share,
    )
