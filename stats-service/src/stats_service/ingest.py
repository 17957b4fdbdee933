"""Recording generation events in the log: one transaction per batch of events, one row per job.

The caller acknowledges the events only after `record_events` returns, i.e. after the commit; a batch that
fails is rolled back whole and delivered again. Because the merge (merge.py) is idempotent and independent of
order, a redelivered or late event never duplicates a row nor moves a job back to an older state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from contracts.messages.events import GenerationEvent
from stats_service.db import is_sqlite, write_transaction
from stats_service.merge import JobState, apply_event
from stats_service.tables import GenerationRow

JSON_COLUMNS = ("styles", "retry_reasons", "final_timings", "outputs")
INSERT_CHUNK = 200  # rows per INSERT statement, well below SQLite's limit of bound parameters


class BatchResult(msgspec.Struct, frozen=True):
    events: int
    jobs: int  # distinct jobs in the batch
    inserted: int
    updated: int  # rows that changed; an event already recorded changes nothing


def state_from_row(row: dict[str, Any]) -> JobState:
    values = {k: v for k, v in row.items() if k != "id"}
    for name in JSON_COLUMNS:
        if isinstance(values.get(name), (str, bytes)):
            values[name] = msgspec.json.decode(values[name])
    return msgspec.convert(values, JobState, strict=False)


def row_values(state: JobState) -> dict[str, Any]:
    values = msgspec.to_builtins(state)
    for name in JSON_COLUMNS:
        values[name] = None if values[name] is None else msgspec.json.encode(values[name]).decode()
    return values


def _by_job(events: Iterable[GenerationEvent]) -> dict[str, list[GenerationEvent]]:  # type: ignore[valid-type]
    grouped: dict[str, list[GenerationEvent]] = {}  # type: ignore[valid-type]
    for event in events:
        grouped.setdefault(event.job_id, []).append(event)
    return grouped


async def load_states(job_ids: Sequence[str], *, lock: bool = False) -> dict[str, JobState]:
    query = GenerationRow.select().where(GenerationRow.job_id.is_in(list(job_ids)))
    if lock and not is_sqlite():
        query = query.lock_rows()
    return {row["job_id"]: state_from_row(row) for row in await query}


async def record_events(events: Sequence[GenerationEvent]) -> BatchResult:  # type: ignore[valid-type]
    """Merge `events` into the log in one transaction (all of them or none)."""
    grouped = _by_job(events)
    if not grouped:
        return BatchResult(events=0, jobs=0, inserted=0, updated=0)
    now = time.time()
    inserts: list[JobState] = []
    updates: list[JobState] = []
    async with write_transaction():
        existing = await load_states(list(grouped), lock=True)
        for job_id, job_events in grouped.items():
            before = existing.get(job_id)
            state = msgspec.structs.replace(before) if before is not None else None
            for event in sorted(job_events, key=lambda e: e.seq):
                state = apply_event(state, event)
            assert state is not None
            if before is None:
                state.updated_at = now
                inserts.append(state)
            elif state != before:
                state.updated_at = now
                updates.append(state)
        for start in range(0, len(inserts), INSERT_CHUNK):
            chunk = inserts[start : start + INSERT_CHUNK]
            await GenerationRow.insert(*(GenerationRow(**row_values(s)) for s in chunk))
        for state in updates:
            values = row_values(state)
            del values["job_id"]
            await GenerationRow.update(values).where(GenerationRow.job_id == state.job_id)
    return BatchResult(events=len(events), jobs=len(grouped), inserted=len(inserts), updated=len(updates))
