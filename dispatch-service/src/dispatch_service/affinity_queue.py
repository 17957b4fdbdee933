"""The `pull_affinity` strategy: a window of fetched jobs, matched to free instances by model affinity.

Plain pull gives the next job to whichever instance frees first. Here this replica holds a small window of the
next jobs of the stream (kept alive with `in_progress`, as a running job's message is), so that when a slot frees
it can pick the job whose models that instance holds, and when a job could go to several free instances it can
pick the one holding its models (see affinity.plan). The window fills, and jobs leave it, by fair share between
API keys (fair_share.py), oldest first among equals within a key; a job no
available instance can run goes back to the stream, as with pull, so it never blocks the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg

from contracts.messages.render_types import Requirements
from contracts.runtime.logs import get_logger
from dispatch_service.affinity import Server, Waiting, loader_nodes, models_of, plan
from dispatch_service.fair_share import JobMessage, Standing, ahead_elsewhere, fair_order, keys_owed_places
from dispatch_service.jobs import is_final
from dispatch_service.leases import Lease
from dispatch_service.store import JobRecord

if TYPE_CHECKING:
    from dispatch_service.scheduler import Scheduler

log = get_logger("affinity")

MIN_WINDOW = 8
WINDOW_PER_SLOT = 4  # jobs held per slot of the available instances: enough to find a warm one for each
RETRY_DELAY_S = 0.2
PLACE_EVERY_S = 0.25  # placement is looked at again this often (estimates change as jobs run)
DEFER_S = 2 * PLACE_EVERY_S  # longest a free slot is left to another replica's job whose key's turn it is


@dataclass
class _Held:
    msg: Msg
    row: JobRecord
    requirements: Requirements
    models: frozenset[str]
    claim: Lease | None  # see SlotLeases.hold

    async def release(self) -> None:
        if self.claim is not None:
            await self.claim.release()


class AffinityQueue:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._pool = scheduler.pool
        self.window: list[_Held] = []
        self._deferring_since: float | None = None  # see _defer
        # Keys whose next job comes before the window's last in fair order: fetched even when the window is full.
        self._owed: set[str | None] = set()

    def _window_size(self) -> int:
        slots = sum(s.config.slots for s in self._pool.states.values() if s.available)
        return max(MIN_WINDOW, WINDOW_PER_SLOT * slots)

    async def run(self) -> None:
        fetcher = asyncio.ensure_future(self._fetch_loop())
        try:
            while True:
                self._pool.changed.clear()
                try:
                    await self._place_round()
                except Exception:  # NATS busy for a moment: the held jobs stay, the next round tries again
                    log.exception("could not place the waiting jobs this round")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pool.changed.wait(), timeout=PLACE_EVERY_S)
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher

    async def _fetch_loop(self) -> None:
        every = self._scheduler.settings.dispatch_takeover_s / 4
        kept_alive = time.monotonic()
        while True:
            if time.monotonic() - kept_alive > every:
                kept_alive = time.monotonic()
                await self._keep_alive()
            size = self._window_size()
            full = len(self.window) >= size
            # Past its size only for keys owed a place (at most twice the size), so one key's burst held here
            # does not keep another key's jobs out.
            if (full and (not self._owed or len(self.window) >= 2 * size)) or not any(
                s.available for s in self._pool.states.values()
            ):
                await asyncio.sleep(0.05)
                continue
            # The window fills by fair share too: the key whose turn it is, counting the jobs it has here already.
            held = Counter(h.row.api_key_id for h in self.window)
            queues = self._scheduler.queues
            only = self._owed if full else None
            if not await queues.take_next(self._hold, held, only):
                await queues.wait_for_jobs(self._pool.changed, timeout=0.5)

    async def _hold(self, msg: Msg) -> None:
        # Claimed first, before its row is read: a kill -9 from here on leaves a lease from which the restarted
        # replica hands the message back at once (else it waited out the take-over time; see Scheduler._place).
        job_id = msgspec.json.decode(msg.data, type=JobMessage).job_id
        await self._scheduler.test_pause_after_fetch()
        claim = await self._scheduler.leases.hold(self._scheduler._note(job_id, msg))
        admitted = await self._scheduler.admit(msg)
        if admitted is None:
            if claim is not None:
                await claim.release()
            return
        row, requirements = admitted
        if not self._pool.candidates(requirements):  # none up that can run it: back to the stream, as with pull
            await msg.nak(delay=RETRY_DELAY_S)
            if claim is not None:
                await claim.release()
            return
        known = frozenset().union(*(s.model_files for s in self._pool.states.values()))
        self.window.append(_Held(msg, row, requirements, models_of(loader_nodes(row.workflow, known)), claim))
        self._pool.notify()

    async def _place_round(self) -> None:
        if not self.window:
            return
        affinity = self._scheduler.affinity
        states = self._pool.states
        servers = {
            name: Server(
                name=name,
                free_slots=s.config.slots - s.running,
                loaded=affinity.memory.loaded(name),
                frees_in_s=affinity.frees_in_s(name),
            )
            for name, s in states.items()
        }
        # A job whose key is at its running limit stays in the window, out of this round's plan.
        eligible = [held for held in self.window if not await self._scheduler.key_at_running_limit(held.row)]
        # Fair share: the keys take turns by their recent run time and weight; a key's jobs keep their order.
        queues = self._scheduler.queues
        by_key = {standing.api_key_id: standing for standing in await queues.standings()}
        order = fair_order([held.row.api_key_id for held in eligible], by_key, fair=queues.fair)
        eligible = [eligible[index] for index in order]
        if self._defer(eligible, by_key, servers):
            return
        jobs = [
            Waiting(
                render_type=held.row.render_type,
                models=held.models,
                able=[s.config.name for s in self._pool.candidates(held.requirements)],
            )
            for held in eligible
        ]
        plan(jobs, servers, affinity.costs)
        for held, job in zip(eligible, jobs, strict=True):
            if job.placed is not None and await self._scheduler.key_at_running_limit(held.row):
                continue  # a job of the same key started earlier in this round
            if not job.able:  # its instances went down: back to the stream, not held here while others wait
                self.window.remove(held)
                await held.msg.nak(delay=RETRY_DELAY_S)
                await held.release()
            elif job.placed is not None and job.placed in states:
                await self._start(held, job.placed)

    def _defer(self, eligible: list[_Held], by_key: dict[str | None, Standing], servers: dict[str, Server]) -> bool:
        """Fair share across replicas: while a slot is free and a key whose jobs this replica does not hold has had
        less service than every key it holds, it leaves the slot to the replica holding that key's next job, for at
        most DEFER_S (that replica places within its next round; should none hold it, the slot is not idle long).
        Meanwhile the window fetches past its size (see keys_owed_places), so this replica takes that key's next job
        itself if it can."""
        free = any(server.free_slots > 0 for server in servers.values())
        held_keys = {held.row.api_key_id for held in eligible}
        fair = self._scheduler.queues.fair
        self._owed = keys_owed_places([held.row.api_key_id for held in self.window], by_key) if fair else set()
        if not (fair and free and ahead_elsewhere(held_keys, by_key)):
            self._deferring_since = None
            return False
        now = time.monotonic()
        if self._deferring_since is None:
            self._deferring_since = now
        return now - self._deferring_since < DEFER_S

    async def _start(self, held: _Held, instance: str) -> None:
        state = self._pool.states[instance]
        note = self._scheduler._note(held.row.job_id, held.msg)
        lease = await self._scheduler.leases.try_take(instance, state.config.slots, note)
        if lease is None:  # another replica took the slot: the job waits for the next round
            return
        self.window.remove(held)
        self._scheduler._start(held.msg, held.row, state, lease)
        await held.release()  # the slot lease names the job from now on

    async def _keep_alive(self) -> None:
        """The held jobs' messages stay ours; a job cancelled meanwhile leaves the window."""
        for held in list(self.window):
            try:
                row = await self._scheduler.store.get(held.row.job_id)
                if row is None or is_final(row):
                    self.window.remove(held)
                    await held.msg.ack()
                    await held.release()
                else:
                    await held.msg.in_progress()
                    if held.claim is not None:
                        await held.claim.refresh()
            except Exception as exc:  # NATS busy electing a leader: try again at the next round, before ack_wait
                log.warning("could not keep a waiting job's claim alive", error=str(exc) or repr(exc))

    async def hand_back(self) -> None:
        """This dispatcher stops: the held jobs go back to the stream at once."""
        while self.window:
            held = self.window.pop(0)
            # Each on its own: a nak that fails (NATS away) does not keep the claim from being released.
            with contextlib.suppress(Exception):
                await held.msg.nak()
            with contextlib.suppress(Exception):
                await held.release()
