"""Recording generation events in the log: one transaction per batch of events, one row per job.

The caller acknowledges the events only after `record_events` returns, i.e. after the commit; a batch that
fails is rolled back whole and delivered again. Because the merge (merge.py) is idempotent and independent of
order, a redelivered or late event never duplicates a row nor moves a job back to an older state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import msgspec

from contracts.messages.events import GenerationEvent
from stats_service import store
from stats_service.merge import JobState, apply_event


class BatchResult(msgspec.Struct, frozen=True):
    events: int
    jobs: int  # distinct jobs in the batch
    inserted: int
    updated: int  # rows that changed; an event already recorded changes nothing
    finished: list[JobState] = []  # rows that became final in this batch (each job once, for the figures)


def _by_job(events: Iterable[GenerationEvent]) -> dict[str, list[GenerationEvent]]:
    grouped: dict[str, list[GenerationEvent]] = {}
    for event in events:
        grouped.setdefault(event.job_id, []).append(event)
    return grouped


async def record_events(events: Sequence[GenerationEvent]) -> BatchResult:
    """Merge `events` into the log in one transaction (all of them or none)."""
    grouped = _by_job(events)
    if not grouped:
        return BatchResult(events=0, jobs=0, inserted=0, updated=0)
    now = time.time()
    inserts: list[JobState] = []
    updates: list[tuple[JobState, JobState]] = []  # (stored, merged)
    finished: list[JobState] = []
    async with store.write_transaction():
        existing = await store.load_states(list(grouped), lock=True)
        for job_id, job_events in grouped.items():
            before = existing.get(job_id)
            state = msgspec.structs.replace(before) if before is not None else None
            for event in sorted(job_events, key=lambda e: e.seq):
                state = apply_event(state, event)
            assert state is not None
            if state.is_final and not (before is not None and before.is_final):
                finished.append(state)
            if before is None:
                state.updated_at = now
                inserts.append(state)
            elif state != before:
                state.updated_at = now
                updates.append((before, state))
        await store.insert_states(inserts)
        await store.update_states(updates)
    return BatchResult(
        events=len(events), jobs=len(grouped), inserted=len(inserts), updated=len(updates), finished=finished
    )
