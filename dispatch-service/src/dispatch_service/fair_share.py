"""Fair share between API keys: a free slot goes to the key that has had the least run time recently, not to the
oldest job overall.

Each key's jobs are on a subject of their own in the job stream (`hub.jobs.key.<token>.<job_id>`, the token a hash
of the key id) with a durable pull consumer of their own (`dispatch-key-<token>`), so a key's jobs leave the stream
in the order they came, and the dispatcher can take the next job of any key. Jobs without a key (admin UI, NATS
clients) keep the subject and consumer they always had (`hub.jobs.pending.<job_id>`, `dispatch`) and count as one
more key.

Which key comes next is decided from the job table, which every replica shares: for each key with jobs waiting,
the run time its jobs had in the last `HUB_DISPATCH_FAIR_SHARE_WINDOW_S` seconds (an ended run counts what it
took; a running one at least the mean measured run time, so jobs started a moment ago weigh at once), divided by
the key's weight. The key with the least goes first, among equals the one whose oldest job waited longest. Keys
at their running limit are passed over. Nothing lives in one process's memory beyond the jobs this replica has
started and not yet recorded, so replicas and restarts see the same order. With `HUB_DISPATCH_FAIR_SHARE=off` keys
are taken oldest waiting job first: one queue in order of arrival, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from contracts.runtime.config import Settings
from contracts.runtime.consumers import Durable, DurableFamily, OwnedHandler
from contracts.runtime.logs import get_logger
from contracts.streams import JOBS, JOBS_STREAM, JOBS_SUBJECTS, job_subject, key_job_subject
from dispatch_service.store import JobStore, KeyRun, WaitingKey

log = get_logger("fair_share")

CONSUMER = "dispatch"  # jobs without an API key (and every job queued before fair share)
KEY_CONSUMER_PREFIX = "dispatch-key-"
KEY_CONSUMER_IDLE_S = 24 * 3600.0  # the server removes a key's consumer unused this long; made again when needed
FETCH_TIMEOUT_S = 0.1  # a key whose waiting jobs are all held elsewhere costs this much of a round
UNMEASURED_RUN_S = 1.0  # what a running job counts before any run was measured
ESTIMATE_EVERY_S = 5.0  # the mean run time is read again this often
UNNAMED_LOOKED_AT = 500  # waiting jobs looked up at most for messages held by no lease (unnamed_deliveries)
CONSUMERS_PER_PAGE = 256  # the server's page of a consumer list


class JobMessage(msgspec.Struct):
    """A job's stream message: its row (the job table) says the rest."""

    job_id: str


def key_token(api_key_id: str) -> str:
    """A key id as a subject token: always valid and of fixed length, whatever the id holds."""
    return hashlib.sha256(api_key_id.encode()).hexdigest()[:16]


def subject_of(job_id: str, api_key_id: str | None) -> str:
    return job_subject(job_id) if api_key_id is None else key_job_subject(key_token(api_key_id), job_id)


@dataclass(frozen=True)
class Standing:
    """A key with jobs waiting, as fair share ranks it."""

    api_key_id: str | None
    served_s: float  # run time in the window, divided by the weight
    unit_s: float  # what one more job of the key adds to `served_s` (the mean run time over the weight)
    oldest_accepted_at: float
    at_running_limit: bool
    waiting: int = 0


def weight_of(request: Mapping[str, Any]) -> int:
    weight = request.get("weight")
    return int(weight) if isinstance(weight, int) and weight >= 1 else 1


def standings(
    waiting: list[WaitingKey],
    ended: Mapping[str | None, float],
    runs: list[KeyRun],
    started_here: Mapping[str, set[str]],
    mean_run_s: float,
    now: float,
    window_s: float = float("inf"),
) -> list[Standing]:
    """The keys with jobs waiting and their service, unsorted. `ended`: per key, the run time of its jobs that
    started in the window and ended; `runs`: the jobs running now, each counting at least `mean_run_s` and at most
    the window.
    `started_here` (key id or "" -> job ids): jobs this replica has started whose rows may not say so yet; each
    counts one mean run time until its row does."""
    served: dict[str | None, float] = dict(ended)
    running: dict[str | None, set[str]] = {}
    for run in runs:
        served[run.api_key_id] = served.get(run.api_key_id, 0.0) + max(min(now - run.started_at, window_s), mean_run_s)
        running.setdefault(run.api_key_id, set()).add(run.job_id)
    result = []
    for key in waiting:
        weight = weight_of(key.request)
        recorded = running.get(key.api_key_id, set())
        unrecorded = started_here.get(key.api_key_id or "", set()) - recorded
        limit = key.request.get("max_running")
        busy = len(recorded) + len(unrecorded)
        result.append(
            Standing(
                api_key_id=key.api_key_id,
                served_s=(served.get(key.api_key_id, 0.0) + len(unrecorded) * mean_run_s) / weight,
                unit_s=mean_run_s / weight,
                oldest_accepted_at=key.oldest_accepted_at,
                waiting=key.waiting,
                at_running_limit=key.api_key_id is not None and isinstance(limit, int) and busy >= limit,
            )
        )
    return result


def ranked(keys: list[Standing], held: Mapping[str | None, int], *, fair: bool) -> list[Standing]:
    """The order in which keys get the next slot: least service first (counting `held`, jobs of the key this
    replica already holds waiting), then the longest waiting; only by the longest waiting when not `fair`."""
    if not fair:
        return sorted(keys, key=lambda k: k.oldest_accepted_at)
    return sorted(keys, key=lambda k: (k.served_s + held.get(k.api_key_id, 0) * k.unit_s, k.oldest_accepted_at))


def fair_order(job_keys: list[str | None], by_key: Mapping[str | None, Standing], *, fair: bool) -> list[int]:
    """The order in which held jobs (given by their keys, oldest first) should start: each job's tag is its key's
    service plus one unit per job of the key before it, so keys take turns by weight and a key's jobs keep their
    order. Indexes into `job_keys`."""
    if not fair:
        return list(range(len(job_keys)))
    seen: dict[str | None, int] = {}
    tags: list[tuple[float, int]] = []
    for index, key in enumerate(job_keys):
        standing = by_key.get(key)
        before = seen.get(key, 0)
        seen[key] = before + 1
        tag = 0.0 if standing is None else standing.served_s + before * standing.unit_s
        tags.append((tag, index))
    return [index for _, index in sorted(tags)]


def fair_position(keys: list[Standing], api_key_id: str | None, place_in_key: int) -> int | None:
    """Where the `place_in_key`-th waiting job of a key stands in the whole queue under fair share: 1 + the jobs that
    start before it, its key's earlier ones and each other key's jobs whose turn (service plus one unit per job
    before them) comes first. None when the key has no job waiting."""
    mine = next((k for k in keys if k.api_key_id == api_key_id), None)
    if mine is None:
        return None
    turn = mine.served_s + (place_in_key - 1) * mine.unit_s
    ahead = place_in_key - 1
    for other in keys:
        if other is not mine and other.unit_s > 0:
            ahead += min(other.waiting, max(0, math.ceil((turn - other.served_s) / other.unit_s)))
    return ahead + 1


def keys_owed_places(window_keys: list[str | None], by_key: Mapping[str | None, Standing]) -> set[str | None]:
    """Keys whose next job not in the window (given by its jobs' keys) would start before the window's last job
    in fair order: the window should take it even when full, or it fills with one key's burst."""
    held: dict[str | None, int] = {}
    for key in window_keys:
        held[key] = held.get(key, 0) + 1
    tags = [
        by_key[key].served_s + index * by_key[key].unit_s
        for key, count in held.items()
        if key in by_key
        for index in range(count)
    ]
    if not tags:
        return set()
    last = max(tags)
    return {
        key
        for key, standing in by_key.items()
        if not standing.at_running_limit
        and standing.waiting > held.get(key, 0)
        and standing.served_s + held.get(key, 0) * standing.unit_s < last
    }


def ahead_elsewhere(held_keys: set[str | None], by_key: Mapping[str | None, Standing]) -> bool:
    """Whether a key with no job among `held_keys` (those this replica holds) has had less service than every key
    that has: its turn, and another replica may hold its next job."""
    mine = [by_key[key].served_s for key in held_keys if key in by_key]
    if not mine:
        return False
    best_here = min(mine)
    return any(
        standing.served_s < best_here
        for key, standing in by_key.items()
        if key not in held_keys and not standing.at_running_limit
    )


class KeyQueues:
    """The job stream's consumers, one per key, and the fair choice of the next one to take a job from."""

    def __init__(
        self,
        settings: Settings,
        nc: NatsClient,
        js: JetStreamContext,
        store: JobStore,
        started_of_key: Mapping[str, set[str]],
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._js = js
        self._store = store
        self._started_of_key = started_of_key
        self._consumers = DurableFamily(self._durable, lambda: js, settings.jetstream_replicas, log, lambda: nc)
        self._arrived = asyncio.Event()
        self._doorbell: Any = None
        self._mean_run_s = UNMEASURED_RUN_S
        self._mean_read_at = 0.0
        self._taken_over_check_at = 0.0  # when to look for jobs of dead dispatchers again (see _take_taken_over)

    async def open(self) -> None:
        await self._consumers.open(None)

        async def rang(_: Msg) -> None:
            self._arrived.set()

        # A plain subscription beside the stream: it rings when any replica queues a job, so an idle loop wakes.
        self._doorbell = await self._nc.subscribe(JOBS_SUBJECTS, cb=rang)

    async def close(self) -> None:
        if self._doorbell is not None:
            with contextlib.suppress(Exception):
                await self._doorbell.unsubscribe()

    def _durable(self, api_key_id: str | None) -> Durable[JobMessage]:
        """The consumer of a key's jobs (None: jobs without a key). The handler owns a job's ack: it is acked when
        the job ends, kept in progress while it runs, and delivered again to any replica ack_wait after its
        dispatcher died."""
        if api_key_id is None:
            name, subject, idle = CONSUMER, job_subject("*"), None
        else:
            token = key_token(api_key_id)
            name, subject, idle = KEY_CONSUMER_PREFIX + token, key_job_subject(token, "*"), KEY_CONSUMER_IDLE_S
        return Durable(
            name=name,
            stream=JOBS,
            message=JobMessage,
            description="Jobs waiting for a ComfyUI slot" + ("" if api_key_id is None else " (one API key's)"),
            what="job",
            doing="placing jobs",
            ack_wait_s=self._settings.dispatch_takeover_s,
            max_ack_pending=10_000,
            batch=1,
            fetch_wait_s=FETCH_TIMEOUT_S,
            nak_delay_s=1.0,
            retry_delays_s=(0.2,),
            filter_subject=subject,
            inactive_threshold_s=idle,
        )

    async def _mean_run(self) -> float:
        if time.monotonic() - self._mean_read_at > ESTIMATE_EVERY_S:
            self._mean_read_at = time.monotonic()
            self._mean_run_s = await self._store.recent_run_s() or UNMEASURED_RUN_S
        return self._mean_run_s

    async def any_waiting(self) -> bool:
        """Whether any job waits (a job queued from here on wakes wait_for_jobs), or it is time to look for jobs of
        dead dispatchers (see _take_taken_over)."""
        if self._arrived.is_set():
            # The doorbell rang since the last look: a job was queued (this replica's submit, mostly), so one waits
            # unless another replica took it meanwhile, which take_next finds out. The query it saves sat between
            # the submit and the job's fetch.
            self._arrived.clear()
            return True
        return await self._store.any_waiting() or time.monotonic() >= self._taken_over_check_at

    async def standings(self) -> list[Standing]:
        """The keys with jobs waiting now, with their service in the window (from the shared job table)."""
        waiting = await self._store.waiting_keys()
        if not waiting:
            return []
        if len(waiting) == 1 and waiting[0].request.get("max_running") is None:
            # One key waits, without a running limit: it goes next whatever its service (two queries saved).
            only = waiting[0]
            unit = await self._mean_run() / weight_of(only.request)
            return [Standing(only.api_key_id, 0.0, unit, only.oldest_accepted_at, False, only.waiting)]
        now = time.time()
        window_s = self._settings.dispatch_fair_share_window_s
        ended = await self._store.run_time_since(now - window_s)
        runs = await self._store.running_runs()
        return standings(waiting, ended, runs, self._started_of_key, await self._mean_run(), now, window_s)

    @property
    def fair(self) -> bool:
        return self._settings.dispatch_fair_share

    def read_standings(self) -> asyncio.Future[list[Standing]]:
        """The standings, read from now on beside what the caller does meanwhile, for its take_next to come."""
        self._arrived.clear()  # a job queued from here on wakes wait_for_jobs
        return asyncio.ensure_future(self.standings())

    async def take_next(
        self,
        handle: OwnedHandler,
        held: Mapping[str | None, int] | None = None,
        only: AbstractSet[str | None] | None = None,
        read: Awaitable[list[Standing]] | None = None,
    ) -> bool:
        """Fetch one job from the key whose turn it is (the next key when that one has none to give right now; only
        keys in `only` when given) and hand it over to `handle`, which owns its ack; False when no key gave one. A
        message `handle` fails on is nakked, so it is delivered again. `read`: standings read_standings began."""
        if read is None:
            self._arrived.clear()  # a job queued from here on wakes wait_for_jobs
            read = self.standings()
        keys = ranked(await read, held or {}, fair=self.fair)
        turns = (
            standing.api_key_id
            for standing in keys
            if not standing.at_running_limit and (only is None or standing.api_key_id in only)
        )
        return await self._consumers.take(turns, handle) or await self._take_taken_over(handle)

    async def _take_taken_over(self, handle: OwnedHandler) -> bool:
        """A job whose dispatcher died is delivered again after the take-over time with its row still `running`, so
        its key may have no job waiting (no standing): the consumers of keys with running jobs are looked at too,
        every half take-over time (one short fetch each), so such a job is followed or run again all the same."""
        if time.monotonic() < self._taken_over_check_at:
            return False
        self._taken_over_check_at = time.monotonic() + self._settings.dispatch_takeover_s / 2
        return await self._consumers.take(await self._store.running_keys(), handle)

    async def delivered_waiting(self) -> dict[tuple[str, int], str]:
        """The waiting jobs whose messages are delivered and not yet acknowledged, by consumer and stream sequence:
        an ack subject that hands each back. Delivered (up to the consumer's last delivery) and not acknowledged
        (past its ack floor): a waiting job's message in that range is held by some dispatcher, or nakked and not
        yet delivered again. Only the waiting jobs of consumers with messages pending are looked up (one read each,
        at most UNNAMED_LOOKED_AT, the oldest first)."""
        js = self._js
        infos = {info.name: info for info in await self._consumer_infos() if info.num_ack_pending}
        found: dict[tuple[str, int], str] = {}
        if not infos:
            return found
        for job_id, api_key_id in await self._store.waiting_jobs(UNNAMED_LOOKED_AT):
            name = self._durable(api_key_id).name
            info = infos.get(name)
            if info is None or info.delivered is None or info.ack_floor is None:
                continue
            try:
                seq = (await js.get_last_msg(JOBS_STREAM, subject_of(job_id, api_key_id))).seq or 0
            except NotFoundError:  # accepted, not yet on the stream
                continue
            if info.ack_floor.stream_seq < seq <= info.delivered.stream_seq:
                # The server reads the stream and consumer sequences of an ack subject (ADR-15's
                # $JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<consumer seq>.<time>.<pending>): a NAK is
                # taken for a message it has pending, with any consumer sequence since the ack floor.
                found[name, seq] = f"$JS.ACK.{JOBS_STREAM}.{name}.1.{seq}.{info.delivered.consumer_seq}.0.0"
        return found

    async def _consumer_infos(self) -> list[ConsumerInfo]:
        infos: list[ConsumerInfo] = []
        while page := await self._js.consumers_info(JOBS_STREAM, offset=len(infos)):
            infos.extend(page)
            if len(page) < CONSUMERS_PER_PAGE:
                break
        return infos

    async def wait_for_jobs(self, changed: asyncio.Event, timeout: float) -> None:
        """Until a job is queued anywhere (since the last take_next), `changed` is set (a slot freed), or `timeout`."""
        waiters = [asyncio.ensure_future(self._arrived.wait()), asyncio.ensure_future(changed.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
