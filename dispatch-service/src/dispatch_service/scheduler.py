"""Scheduling: jobs are pulled from the JetStream job stream when an instance can take one, then run.

Strategies:
- `pull` (default): the dispatcher fetches the next job only when some healthy instance has a free slot, and
  gives it to the best free instance that can run it (holds its node classes and models). A faster instance
  frees its slots sooner and so takes more jobs; no compatible job waits while a compatible slot is idle.
- `round_robin`: jobs are bound to instances in turn as they arrive, whatever their speed (for comparison).

A job that no free instance can take right now is handed back to the stream (NAK with a short delay) so any
replica can place it as soon as a slot frees. While a job runs, its stream message is kept alive
(`in_progress`) and its slot lease refreshed; if the dispatcher dies, both expire and the job is run again
elsewhere. An instance that fails or hangs is marked down and the job retried on another instance, up to
`max_attempts`, with the reasons kept on the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import time
from collections import defaultdict, deque
from collections.abc import Awaitable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from contracts.errors import ErrorCode, HubError
from contracts.messages.events import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobProgress,
    JobQueued,
    JobRetrying,
    JobStarted,
    OutputStored,
)
from contracts.messages.jobs import CANCELLED_BY_CALLER, OutputFile, wants_webhooks
from contracts.messages.render_types import Requirements
from contracts.runtime import tracing
from contracts.runtime.bus import publish_durably, through_election
from contracts.runtime.config import Settings
from contracts.runtime.images import image_size
from contracts.runtime.logs import get_logger
from contracts.runtime.storage import OutputStorage, PreviewStore
from contracts.streams import JOBS, JOBS_STREAM
from dispatch_service.affinity import Affinity, CostModel, ModelMemory
from dispatch_service.affinity_queue import AffinityQueue
from dispatch_service.comfyui import (
    WEBSOCKET_OUTPUT_CLASSES,
    ComfyError,
    ComfyExecutionFailed,
    ComfyInterrupted,
    ComfyNoOutputs,
    ComfyRejected,
    ComfyUnavailable,
    OutputRef,
    ProgressUpdate,
    RunResult,
    output_nodes_of,
)
from dispatch_service.events import EventPublisher, ProgressRelay
from dispatch_service.fair_share import JobMessage, KeyQueues, Standing, subject_of
from dispatch_service.jobs import is_final, requirements_of, timings_of
from dispatch_service.leases import Lease, LeaseNote, SlotLeases
from dispatch_service.pool import InstanceState, Pool
from dispatch_service.prefetch import OutputPrefetch, download
from dispatch_service.renditions import fetch_rendition, keep_rendition, wants_rendition
from dispatch_service.store import ACTIVE_STATUSES, RUNNING_STATUSES, WAITING_STATUSES, JobFailure, JobRecord, JobStore

log = get_logger("scheduler")

RETRY_DELAY_S = 0.2
HAND_BACK_WITHIN_S = 5.0  # at a stop, for ComfyUI to confirm the interrupt of the jobs handed back
# A delivered message of a waiting job that no lease names at two looks this far apart is handed back (see
# _hand_back_unnamed): a live dispatcher names the job it fetched within milliseconds.
UNNAMED_GRACE_S = 2.0
PROGRESS_WRITE_EVERY_S = 0.5
PROGRESS_EVENT_EVERY_S = 0.1
CLAIM_WAIT_S = 1.0  # the fetch loop waits at most this long for the claims of the jobs it just started
OUTPUTS_AT_ONCE = 4  # a batch's outputs stored side by side; each holds up to 8 MiB in memory meanwhile


def _left(limit_at: float) -> float:
    """Seconds left until a job's time limit (monotonic `limit_at`): how long its results may wait for NATS. At least
    a few, so a job that ComfyUI finished just at its limit is still stored when NATS answers at once."""
    return max(limit_at - time.monotonic(), 5.0)


def _failure_kind(exc: Exception) -> str:
    """A failed attempt's kind, for the figures (a few fixed words: a label, not the message)."""
    kinds: tuple[tuple[type[Exception], str], ...] = (
        (ComfyUnavailable, "unavailable"),
        (ComfyInterrupted, "interrupted"),
        (ComfyRejected, "rejected"),
        (ComfyExecutionFailed, "execution_failed"),
        (ComfyError, "comfyui"),
        (HubError, "hub"),
    )
    return next((kind for cls, kind in kinds if isinstance(exc, cls)), "internal")


def _log_progress_write_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not record a job's progress", error=str(task.exception()))


def _seen(future: asyncio.Future[Any]) -> None:
    """A future no one awaits any more: its error, if any, is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


def _done(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _no_outputs(workflow: dict[str, Any]) -> ComfyNoOutputs:
    return ComfyNoOutputs(
        "ComfyUI finished the job but left no output the hub can store: no file reported and no image sent over "
        f"the WebSocket by its output nodes {', '.join(output_nodes_of(workflow))} (a SaveImageWebsocket image is "
        "lost when the WebSocket drops; text-only nodes such as PreviewAny save nothing)"
    )


async def _keep_bound_alive(queue: deque[tuple[Msg, Lease | None]]) -> None:
    """round_robin: the bound jobs' messages stay this replica's, and their claims with them."""
    for msg, claim in list(queue):
        await msg.in_progress()
        if claim is not None:
            await claim.refresh()


class _Slot:
    """One taken slot of an instance; freeing it (once) lets the next job start there."""

    def __init__(self, scheduler: Scheduler, state: InstanceState, lease: Lease) -> None:
        self._scheduler = scheduler
        self._state = state
        self._lease = lease
        self._freeing: asyncio.Future[None] | None = None
        # While the outputs of a job whose slot was freed are stored: a lease naming the job and its message's reply
        # subject (SlotLeases.hold), for a restart after a kill -9 to hand the message back at once.
        self._claim: asyncio.Future[Lease | None] | None = None

    @property
    def freed(self) -> bool:
        return self._freeing is not None

    @property
    def instance(self) -> str:
        return self._state.config.name

    async def refresh(self) -> bool:
        """Keep the slot's lease alive, or once the slot is freed the job's claim; False if it was lost."""
        if not self.freed:
            return await self._lease.refresh()
        claim = await self._claim if self._claim is not None else None
        return claim is None or await claim.refresh()

    def free_soon(self, claim_for: LeaseNote | None = None) -> None:
        """Start freeing the slot, beside what the job still does (its outputs are stored meanwhile); the job's
        message stays claimed under `claim_for` until `free` (once it is acked)."""
        if self._freeing is None:
            if claim_for is not None and self._scheduler.nc.is_connected:
                self._claim = asyncio.ensure_future(self._claim_job(claim_for))
            self._freeing = asyncio.ensure_future(self._release())

    async def free(self) -> None:
        self.free_soon()
        assert self._freeing is not None
        await self._freeing
        claim = await self._claim if self._claim is not None else None
        if claim is not None:
            await claim.release()

    async def _claim_job(self, note: LeaseNote) -> Lease | None:
        try:
            return await self._scheduler.leases.hold(note)
        except Exception as exc:  # NATS busy: the job goes on unclaimed (a kill -9 now waits the take-over time)
            log.warning("could not claim a job while its outputs are stored", error=str(exc) or repr(exc))
            return None

    async def _release(self) -> None:
        try:
            await self._lease.release()
        finally:
            # Counted free once the lease is: the fetch loop then takes it again with the released revision (one
            # request) instead of finding it still held.
            self._state.running -= 1
            self._scheduler.pool.notify()


@dataclass
class _Running:
    job_id: str
    instance: str
    prefetch: OutputPrefetch  # its outputs, downloaded as their nodes report them (see prefetch.py)
    webhooks: bool = False  # its progress events are copied for its webhooks (wants_webhooks)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    hand_back: bool = False  # interrupted because this dispatcher stops: the job goes back to the stream


@dataclass(eq=False, repr=False)  # a service object: compared, hashed and shown as itself
class Scheduler:
    settings: Settings
    js: JetStreamContext
    pool: Pool
    leases: SlotLeases
    store: JobStore
    events: EventPublisher
    storage: OutputStorage
    _: KW_ONLY
    nc: NatsClient
    replica: str  # stable across a restart: see replica.py
    # Where the JPEG renditions of the outputs of jobs that ask for inline previews go (none: they get none).
    previews: PreviewStore | None = None
    running: dict[str, _Running] = field(default_factory=dict, init=False)
    # API key id -> jobs this replica has started and not yet ended (counted before their row says running).
    _started_of_key: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set), init=False)
    # The stream's consumers, one per API key; which key's job comes next (fair share, see fair_share.py).
    queues: KeyQueues = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _rotation: itertools.count[int] = field(default_factory=itertools.count, init=False)
    # The last job fetched found its free slot taken by another replica.
    _lost_to_another_replica: bool = field(default=False, init=False)
    # pull: the slot taken for the next job fetched.
    _reserved: tuple[InstanceState, Lease] | None = field(default=None, init=False)
    # round_robin: jobs waiting for their instance, each with its claim (see _place_in_rotation).
    _bound: dict[str, deque[tuple[Msg, Lease | None]]] = field(default_factory=lambda: defaultdict(deque), init=False)
    # Which models each instance holds (every strategy keeps it); pull_affinity places jobs by it.
    affinity: Affinity = field(init=False)
    _affinity_queue: AffinityQueue = field(init=False)
    # (instance, kind) -> failed attempts (the figures)
    failures: dict[tuple[str, str], int] = field(default_factory=dict, init=False)
    _looking_for_unnamed: asyncio.Future[None] | None = field(default=None, init=False)  # see _hand_back_unnamed
    # Jobs started here whose claim (row -> running) is not yet written: done when it is, or failed.
    _claiming: dict[str, asyncio.Future[None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.queues = KeyQueues(self.settings, self.nc, self.js, self.store, self._started_of_key)
        memory = ModelMemory(self.js, replicas=self.settings.jetstream_replicas)
        self.affinity = Affinity(memory, CostModel(self.settings.dispatch_model_switch_s))
        self.pool.on_back_up = self.affinity.memory.forget
        self._affinity_queue = AffinityQueue(self)

    # -- queue ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.queues.open()
        await self.affinity.memory.open()
        await self._hand_back_orphans()
        self._looking_for_unnamed = asyncio.ensure_future(self._hand_back_unnamed())

    async def _hand_back_orphans(self) -> None:
        """Jobs this replica's predecessor ran when it died (kill -9). One its ComfyUI instance still has (queued,
        running or finished) is adopted: followed there to its end, not run twice. The others' slots are freed and
        their messages handed back now, so they run again before the waiting jobs, not after the take-over time."""
        adopted: list[str] = []
        handed_back: list[str] = []
        for lease, note in await self.leases.orphans(self.replica, self.pool.states):
            if await self._adopt(lease, note):
                adopted.append(note.job_id)
                continue
            await lease.release()
            if note.reply:  # "": a slot taken for a job not yet fetched
                await self.nc.publish(note.reply, b"-NAK")
                handed_back.append(note.job_id)
        if handed_back:
            await self.nc.flush()
            log.info("handed back the jobs of this replica before its restart", jobs=handed_back)
        if adopted:
            log.info("adopted the jobs this replica's predecessor left running on ComfyUI", jobs=adopted)

    async def _hand_back_unnamed(self) -> None:
        """A job this replica's predecessor had fetched when it died (kill -9), before any lease named it (between
        the fetch's answer and the lease's write): its message is delivered and not acknowledged, held by nobody
        alive, and JetStream would deliver it again only after the take-over time (issue 17, chaos: stalls of
        ~27 s). Such messages are found from the job table (waiting jobs whose messages are delivered but named in
        no lease of any replica) and handed back at once, once they stay so for UNNAMED_GRACE_S: a live replica
        names the job it fetched well within that."""
        try:
            first = await self._unnamed()
            if not first:
                return
            log.info("jobs delivered and named in no lease; handed back if still so", stream_seqs=sorted(first))
            await asyncio.sleep(UNNAMED_GRACE_S)
            again = await self._unnamed()
            handed_back = sorted(first.keys() & again.keys())
            for seq in handed_back:
                await self.nc.publish(again[seq], b"-NAK")
            if handed_back:
                await self.nc.flush()
                log.info("handed back jobs its predecessor had fetched that no lease named", stream_seqs=handed_back)
        except Exception as exc:  # NATS busy: they come back after the take-over time, as before
            log.warning("could not look for jobs delivered and named nowhere", error=str(exc) or repr(exc))

    async def _unnamed(self) -> dict[int, str]:
        """Delivered messages of waiting jobs that no lease names: stream sequence -> an ack subject to hand each
        back. The leases are read last: a job fetched meanwhile is named by then (read first, a job named while the
        rest was read looked unnamed, and a job acked meanwhile hid another: the chaos stall seen once)."""
        delivered = await self.queues.delivered_waiting()
        if not delivered:
            return {}
        named = await self.leases.named_deliveries()
        return {seq: reply for (consumer, seq), reply in delivered.items() if (consumer, seq) not in named}

    async def _adopt(self, lease: Lease, note: LeaseNote) -> bool:
        """Take over the attempt `note` names when its ComfyUI instance still has the prompt: True once it is
        followed here (the slot lease and the job's stream message are this replica's now)."""
        row = await self.store.get(note.job_id)
        state = self.pool.states.get(lease.instance)
        if row is None or state is None or row.instance != lease.instance or not await self._prompt_kept(state, row):
            return False
        data = msgspec.json.encode(JobMessage(row.job_id))
        msg = Msg(self.nc, subject=subject_of(row.job_id, row.api_key_id), reply=note.reply, data=data)
        await msg.in_progress()  # ours now, before the take-over time would deliver it again
        self._start(msg, row, state, lease, adopted=True)
        return True

    async def _slot_on(self, state: InstanceState, note: LeaseNote) -> Lease | None:
        """A slot of `state` for the job `note` names: the one taken before the job was fetched (pull, named after
        the job already) when it is on `state`, else any free one."""
        reserved = self._reserved
        if reserved is not None and reserved[0] is state:
            self._reserved = None
            return reserved[1]
        return await self.leases.try_take(state.config.name, state.config.slots, note)

    async def _prompt_kept(self, state: InstanceState, row: JobRecord) -> bool:
        """Whether the running attempt of `row`, whose dispatcher died, can be followed on `state` (its instance)
        instead of run again: ComfyUI has its prompt (queued, running or finished)."""
        if row.status != "running" or row.instance != state.config.name or not state.available:
            return False  # it died before it claimed the job, or the job ended (cancelled meanwhile)
        if any(node.get("class_type") in WEBSOCKET_OUTPUT_CLASSES for node in row.workflow.values()):
            return False  # its images come over the dead dispatcher's WebSocket, gone with it: it runs again
        try:
            return await state.client.where_is(f"{row.job_id}-{row.attempts}") != "unknown"
        except ComfyError:
            return False  # it runs again, on whichever instance is free

    async def _adopt_delivered_again(self, msg: Msg, row: JobRecord, note: LeaseNote) -> bool:
        """A running job delivered again: the dispatcher running it died (elsewhere, or here while it stored the
        job's outputs) and the take-over time passed. When its instance still has the prompt, it is followed there
        to its end rather than run a second time: True once it is (or will be retried shortly, its slot busy)."""
        state = self.pool.states.get(row.instance or "") if row.status == "running" else None
        if state is None or not await self._prompt_kept(state, row):
            return False
        lease = await self._slot_on(state, note)
        if lease is None:
            await msg.nak(delay=RETRY_DELAY_S)  # its instance is full for a moment: follow it once a slot frees
            return True
        self._start(msg, row, state, lease, adopted=True)
        return True

    async def enqueue(self, job_id: str, api_key_id: str | None) -> None:
        """Put a job on the stream; a repeat within the de-duplication window is dropped by JetStream. A queue at
        its limit (streams.JOBS: discard new) refuses the job: UNAVAILABLE, saying so."""
        try:
            await publish_durably(
                self.js,
                subject_of(job_id, api_key_id),
                msgspec.json.encode(JobMessage(job_id)),
                headers={"Nats-Msg-Id": job_id},
                nc=self.nc,  # a publish in flight when nats-server dies is made again once it is back, not in 5 s
            )
        except APIError as exc:
            if "maximum" not in (exc.description or ""):  # "maximum messages exceeded" / "... bytes exceeded"
                raise
            raise HubError(
                ErrorCode.UNAVAILABLE,
                f"the job queue is full ({JOBS.max_msgs} jobs waiting at most, stream {JOBS_STREAM}: "
                f"{exc.description}); try again once waiting jobs have run",
                details={"max_waiting_jobs": JOBS.max_msgs},
            ) from exc

    def _has_free_slot(self) -> bool:
        return any(s.available and s.running < s.config.slots for s in self.pool.states.values())

    async def run(self) -> None:
        """The fetch-and-place loop of this replica: whenever a slot may be free, the next job of the key whose turn
        it is (see fair_share.py)."""
        if self.settings.dispatch_strategy == "pull_affinity":
            await self._affinity_queue.run()
            return
        while True:
            if self.settings.dispatch_strategy == "pull" and not self._has_free_slot():
                self.pool.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.pool.changed.wait(), timeout=0.5)
                continue
            self.pool.changed.clear()
            try:
                await self._place_next()
            except Exception as exc:  # NATS away or electing a leader: the jobs are safe in the stream; try again
                log.warning("cannot place jobs right now; trying again", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _place_next(self) -> None:
        """One round of the loop: under `pull` a free slot is taken first and then the job for it fetched, so among
        replicas only one that holds a slot takes a key's next job: each key's jobs start in their order."""
        self._lost_to_another_replica = False
        read: asyncio.Future[list[Standing]] | None = None
        if self.settings.dispatch_strategy == "pull":
            if not await self.queues.any_waiting():  # no slot taken while nothing waits
                await self.queues.wait_for_jobs(self.pool.changed, timeout=0.5)
                return
            read = self.queues.read_standings()  # beside the slot's KV write, not after it (a job waits for both)
            try:
                self._reserved = await self._reserve_slot()
            finally:
                if self._reserved is None:
                    read.cancel()
                    read.add_done_callback(_seen)
            if self._reserved is None:  # the slots this replica saw free are taken by other replicas
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.pool.changed.wait(), timeout=RETRY_DELAY_S)
                return
        try:
            took = await self.queues.take_next(self._place, read=read)
        finally:
            reserved, self._reserved = self._reserved, None
            if reserved is not None:  # no job for it: free again
                await reserved[1].release()
        if not took:
            await self.queues.wait_for_jobs(self.pool.changed, timeout=0.5)
            return
        if self._claiming:
            # The next round's look for waiting jobs comes after the claims of those started in this one: before,
            # their rows still read waiting, so the round took a slot, read the standings and fetched for nothing,
            # beside the job's start (2 KV writes and 2 queries in its way).
            await asyncio.wait(list(self._claiming.values()), timeout=CLAIM_WAIT_S)
        if self._lost_to_another_replica:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pool.changed.wait(), timeout=RETRY_DELAY_S)

    async def _reserve_slot(self) -> tuple[InstanceState, Lease] | None:
        """A slot of an instance free as far as this replica knows, taken before its job is fetched."""
        unnamed = LeaseNote(replica=self.replica, job_id="", reply="")
        states = [s for s in self.pool.states.values() if s.available and s.running < s.config.slots]
        for state in sorted(states, key=lambda s: (s.running / s.config.slots, -s.config.weight)):
            lease = await self.leases.try_take(state.config.name, state.config.slots, unnamed)
            if lease is not None:
                return state, lease
        return None

    async def _place(self, msg: Msg) -> None:
        note = self._note(msgspec.json.decode(msg.data, type=JobMessage).job_id, msg)
        await self.test_pause_after_fetch()
        if self.settings.dispatch_strategy == "round_robin":
            await self._place_in_rotation(msg, note)
            return
        await self._name_reserved(note)
        admitted = await self._to_place(msg, note)
        if admitted is None:
            return
        row, requirements = admitted
        candidates = self.pool.candidates(requirements)
        reserved = self._reserved
        if reserved is not None and any(state is reserved[0] for state in candidates):
            self._reserved = None
            self._start(msg, row, *reserved)  # its lease names the job already (_name_reserved)
            return
        for state in candidates:
            lease = await self.leases.try_take(state.config.name, state.config.slots, note)
            if lease is not None:
                self._start(msg, row, state, lease)
                return
        if any(s.running < s.config.slots for s in candidates):
            # A slot free as far as this replica knows was taken by another replica: the job goes back to the head
            # of its key's queue at once (it stays the next to start, its key's order kept) and this replica waits
            # a moment before fetching again, rather than pass over jobs while the others fill the slots.
            self._lost_to_another_replica = True
            await msg.nak()
            return
        await msg.nak(delay=RETRY_DELAY_S)  # no instance that can run it is free: the jobs behind it go first

    async def _to_place(self, msg: Msg, note: LeaseNote) -> tuple[JobRecord, Requirements] | None:
        """`admit`, and None as well when the job is a running one delivered again and followed on ComfyUI, or its key
        is at its running limit (skipped for now, not failed: it keeps its place in the stream)."""
        admitted = await self.admit(msg)
        if admitted is None or await self._adopt_delivered_again(msg, admitted[0], note):
            return None
        if await self.key_at_running_limit(admitted[0]):
            await msg.nak(delay=RETRY_DELAY_S)
            return None
        return admitted

    async def _place_in_rotation(self, msg: Msg, note: LeaseNote) -> None:
        """round_robin: the fetched job is claimed first (SlotLeases.hold, as pull_affinity's window), before its row
        is read, then bound to the next instance in turn; it stays claimed while it waits there (the claim kept alive
        with its message) until the slot lease taken for it names it. A kill -9 from the claim on leaves a lease from
        which the restarted replica hands the job back at once (_hand_back_orphans; before, named nowhere, it waited
        out the take-over time), and a live replica's bound jobs are named, so another replica's start does not hand
        them back (_hand_back_unnamed). No instance up can run it now: back to the stream shortly, as with pull."""
        claim = await self.leases.hold(note)
        try:
            admitted = await self._to_place(msg, note)
            chosen = self._next_in_rotation(admitted[0]) if admitted is not None else None
            if chosen is not None:
                self._bind(chosen, msg, claim)
                claim = None  # the bound job's now, released when it starts
            elif admitted is not None:
                await msg.nak(delay=RETRY_DELAY_S)
        finally:
            if claim is not None:
                await claim.release()

    async def _name_reserved(self, note: LeaseNote) -> None:
        """pull: the slot taken for this fetch names the job and its message's reply subject first, before anything
        else is awaited: a kill -9 from here on leaves a lease from which the restarted replica hands the message
        back at once (_hand_back_orphans). Named later (after the row was read), a kill in between left a delivered
        message no lease named, redelivered only after the take-over time (issue 17, chaos: stalls of ~28 s)."""
        reserved = self._reserved
        if reserved is not None and not await reserved[1].name(note):
            self._reserved = None  # lost (expired and taken by another replica): not ours to release

    async def test_pause_after_fetch(self) -> None:
        """Tests only (HUB_TEST_PAUSE_AFTER_FETCH_S): a kill -9 lands before any lease names the fetched job, the
        window _hand_back_unnamed closes."""
        if self.settings.test_pause_after_fetch_s:
            await asyncio.sleep(self.settings.test_pause_after_fetch_s)

    async def admit(self, msg: Msg) -> tuple[JobRecord, Requirements] | None:
        """A fetched job's row and requirements when it is to be placed; None when the message is dealt with
        here (no such job, already ended, running here, a cancel to finish, or no instance could ever run it)."""
        if self.settings.test_pause_before_admit_s:  # tests only: a kill -9 lands between the fetch and the placing
            await asyncio.sleep(self.settings.test_pause_before_admit_s)
        job_id = msgspec.json.decode(msg.data, type=JobMessage).job_id
        fresh = self.store.take_fresh(job_id)
        # Its first delivery, of a job inserted here: the row as inserted stands for it (no read). Delivered again,
        # it may be running elsewhere or have failed an attempt: read.
        row = fresh if fresh is not None and msg.metadata.num_delivered == 1 else await self.store.get(job_id)
        if row is None:
            log.error("job message without a job row; dropped", job_id=job_id)
            await msg.ack()
            return None
        if is_final(row):  # cancelled (or finished) while it waited
            await msg.ack()
            return None
        if job_id in self.running:
            # Delivered again while this replica still runs it (its keep-alive did not reach NATS in time, e.g.
            # during a leader election): one run is enough. The runner acks the job when it ends; until then
            # each new delivery is only marked in progress, so it does not go to another replica.
            await msg.in_progress()
            return None
        if row.status == "cancelling":  # a cancel reached it, then the replica running it died
            await self._cancelled(job_id, row.instance)
            await msg.ack()
            return None
        requirements = requirements_of(row)
        self.pool.want_folders(requirements)
        never = self.pool.why_never(requirements)
        if never:
            await self.fail(row, never)
            await msg.ack()
            return None
        return row, requirements

    async def key_at_running_limit(self, row: JobRecord) -> bool:
        """Whether the job's API key already has its `max_running` jobs running (those of every replica, from the
        rows, with those this replica has just started and not yet recorded)."""
        limit = row.request.get("max_running")
        if row.api_key_id is None or limit is None:
            return False
        running = await self.store.running_of(row.api_key_id)
        # Not counting the job itself: delivered again after its dispatcher died, its row still says running.
        return len((running | self._started_of_key[row.api_key_id]) - {row.job_id}) >= int(limit)

    def _note(self, job_id: str, msg: Msg) -> LeaseNote:
        return LeaseNote(replica=self.replica, job_id=job_id, reply=msg.reply)

    def _start(self, msg: Msg, row: JobRecord, state: InstanceState, lease: Lease, *, adopted: bool = False) -> None:
        state.running += 1  # counted now, so the fetch loop does not pull a job for a slot just taken
        self.affinity.begin(row.job_id, state, row)
        claimed = self._claiming[row.job_id] = asyncio.get_running_loop().create_future()
        claimed.add_done_callback(
            lambda _: self._claiming.get(row.job_id) is claimed and self._claiming.pop(row.job_id)
        )
        run = self._spawn(self._run_counted(msg, row, state, lease, adopted=adopted))
        run.add_done_callback(lambda _: _done(claimed))  # ended, or cancelled, before its claim

    async def _run_counted(
        self, msg: Msg, row: JobRecord, state: InstanceState, lease: Lease, *, adopted: bool = False
    ) -> None:
        """`_run`, counted against the key's running limit from now until it ends."""
        started = self._started_of_key[row.api_key_id or ""]
        started.add(row.job_id)
        structlog.contextvars.bind_contextvars(job_id=row.job_id)  # this task's log lines name the job
        try:
            # The trace of the job's submission goes on here: its message carries the context (see enqueue).
            with tracing.span(
                "job.run",
                kind="consumer",
                parent=msg.headers,
                job_id=row.job_id,
                render_type=row.render_type,
                instance=state.config.name,
                attempt=row.attempts if adopted else row.attempts + 1,
            ):
                await self._run(msg, row, state, lease, adopted=adopted)
        finally:
            started.discard(row.job_id)

    def _next_in_rotation(self, row: JobRecord) -> InstanceState | None:
        """round_robin: the next instance in a fixed order that can run the job, busy or not."""
        requirements = requirements_of(row)
        able = [s for _, s in sorted(self.pool.states.items()) if s.available and s.can_run(requirements)]
        if not able:
            return None
        return able[next(self._rotation) % len(able)]

    def _bind(self, state: InstanceState, msg: Msg, claim: Lease | None) -> None:
        queue = self._bound[state.config.name]
        queue.append((msg, claim))
        if len(queue) == 1:  # no drainer is running for this instance yet
            self._spawn(self._drain_bound(state))

    async def _drain_bound(self, state: InstanceState) -> None:
        """round_robin: run the jobs bound to `state` as its slots free up, keeping their messages alive. NATS away or
        electing a leader: the jobs stay bound and it tries again (before, the task ended on the error and the jobs
        bound there never started, those delivered again after the take-over time bound behind them)."""
        queue = self._bound[state.config.name]
        kept_alive = time.monotonic()
        while queue:
            try:
                if await self._start_bound(state, queue):
                    continue
                if time.monotonic() - kept_alive > self.settings.dispatch_takeover_s / 4:
                    kept_alive = time.monotonic()
                    await _keep_bound_alive(queue)
            except Exception as exc:
                log.warning("cannot start bound jobs right now; trying again", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            self.pool.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pool.changed.wait(), timeout=0.05)

    async def _start_bound(self, state: InstanceState, queue: deque[tuple[Msg, Lease | None]]) -> bool:
        """round_robin: the first job bound to `state` started (or dropped: it ended meanwhile) when a slot of
        `state` is free; False when none is."""
        msg, claim = queue[0]
        note = self._note(msgspec.json.decode(msg.data, type=JobMessage).job_id, msg)
        lease = await self.leases.try_take(state.config.name, state.config.slots, note)
        if lease is None:
            return False
        queue.popleft()
        if claim is not None:
            await claim.release()  # the slot lease names the job from now on
        row = await self.store.get(note.job_id)
        if row is None or is_final(row):
            await lease.release()
            await msg.ack()
        else:
            self._start(msg, row, state, lease)
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, grace_s: float) -> None:
        """A graceful stop, once the fetch loop has ended (no new job starts). Running jobs may finish within
        `grace_s`; the others are interrupted on ComfyUI and handed back to the stream at once, so another replica
        or the next start runs them first, without waiting out the take-over time (nor ComfyUI running them twice).
        """
        if self._looking_for_unnamed is not None:
            self._looking_for_unnamed.cancel()
        await self._hand_back_bound()
        await self._affinity_queue.hand_back()
        pending = set(self._tasks)
        if self.running:
            log.info("waiting for running jobs before stopping", jobs=sorted(self.running), within_s=grace_s)
            _, pending = await asyncio.wait(pending, timeout=grace_s) if pending else (set(), set())
        if pending:
            for running in self.running.values():
                running.hand_back = True
                running.cancel.set()
            _, pending = await asyncio.wait(pending, timeout=HAND_BACK_WITHIN_S)
        for task in pending:  # not handed back in time: its message is redelivered after the take-over time
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
        await self.affinity.memory.close()
        await self.queues.close()

    async def _hand_back_bound(self) -> None:
        """round_robin: jobs bound to an instance but not started go back to the stream."""
        for queue in self._bound.values():
            while queue:
                msg, claim = queue.popleft()
                # Each on its own: a nak that fails (NATS away) does not keep the claim from being released.
                with contextlib.suppress(Exception):
                    await msg.nak()
                if claim is not None:
                    with contextlib.suppress(Exception):
                        await claim.release()

    # -- running one job ----------------------------------------------------------------------------

    async def _claim(
        self, row: JobRecord, msg: Msg, instance: str, attempt: int, started: float, adopted: bool
    ) -> bool:
        """Take the job to run it from `msg` (False: it was cancelled between fetch and start, or another delivery
        of its message claimed it, see `_refused`).

        The submitting dispatcher records `queued` in the background after its answer; a job fetched before that
        is recorded queued here first, so its events still read accepted, queued, started (before: no `queued`)."""
        if row.status == "accepted" and await self.store.transition(row.job_id, ("accepted",), status="queued"):
            await self.events.publish(JobQueued, job_id=row.job_id)
        return await self.store.claim(
            row.job_id,
            msg.metadata.sequence.stream,
            msg.metadata.num_delivered,
            adopting=adopted,
            status="running",
            instance=instance,
            attempts=attempt,
            started_at=started,
            progress_value=0,
            progress_max=0,
            progress_percent=0.0,
        )

    async def _refused(self, msg: Msg, job_id: str) -> None:
        """A claim refused. The job ended or is being cancelled (or another message of it runs it): its message is
        acked, as before. But when a later delivery of this same message claimed it (this replica stalled between
        fetch and claim, the job was handed back and runs elsewhere), the message is left alone: JetStream keeps one
        pending entry per message, which an ack of any delivery removes, and that entry is the live run's own now
        (acked, a death of that replica would no longer bring the job back)."""
        row = await self.store.get(job_id)
        stream_seq = msg.metadata.sequence.stream
        if row is not None and row.status == "running" and row.stream_seq == stream_seq:
            log.warning(
                "job claimed meanwhile by a later delivery of its message: not run here",
                job_id=job_id,
                stream_seq=stream_seq,
                delivery=msg.metadata.num_delivered,
                claimed_by_delivery=row.delivery,
                instance=row.instance,
            )
            return
        await msg.ack()

    async def _run(self, msg: Msg, row: JobRecord, state: InstanceState, lease: Lease, *, adopted: bool) -> None:
        """Run one attempt of a job on `state`; `adopted`: the attempt this replica's predecessor submitted to ComfyUI
        before it died, followed to its end here (its start and time limit are that attempt's)."""
        job_id = row.job_id
        attempt = row.attempts if adopted else row.attempts + 1
        # Of this attempt: the timings show the run that produced the result.
        started = (row.started_at or time.time()) if adopted else time.time()
        # The attempt's time limit also bounds how long its results wait for NATS to come back (see _left).
        limit_at = time.monotonic() + self.settings.dispatch_job_timeout_s - (time.time() - started)
        # Known as running here before the row says so: a cancel, which needs the row running, then finds it.
        running = self.running[job_id] = _Running(
            job_id=job_id,
            instance=state.config.name,
            prefetch=OutputPrefetch(state.client, OUTPUTS_AT_ONCE),
            webhooks=wants_webhooks(row.request),
        )
        try:
            claimed = await self._claim(row, msg, state.config.name, attempt, started, adopted)
        except BaseException:
            self.running.pop(job_id, None)
            raise
        finally:
            _done(self._claiming.get(job_id))
        slot = _Slot(self, state, lease)
        if not claimed:
            if self.running.get(job_id) is running:  # not another run of it here, from a later delivery
                self.running.pop(job_id)
            self.affinity.ended(job_id)
            await slot.free()
            await self._refused(msg, job_id)
            return
        keep_alive = asyncio.ensure_future(self._keep_alive(msg, slot))
        try:
            result, started_event = await self._execute(row, state, attempt, limit_at, running, adopted=adopted)
            self.affinity.ran(job_id, result.cached_nodes)
            switch_s = self.affinity.switch_s(job_id, result.cached_nodes, result.node_seconds)
            # ComfyUI is done with it: the slot takes the next job while the outputs are fetched. Until the job's
            # message is acked a claim names it: after a kill -9 meanwhile, the restart hands it back at once to be
            # followed on ComfyUI (its prompt is finished there), not after the take-over time.
            slot.free_soon(claim_for=self._note(job_id, msg))
            await started_event
            with tracing.span("outputs.store", instance=state.config.name):
                renditions = self.previews if row.request.get("inline_previews") is True else None
                outputs = await self._store_outputs(job_id, state, result, limit_at, running.prefetch, renditions)
            if not outputs:
                raise _no_outputs(row.workflow)
            await self._complete(row, started, state.config.name, outputs, msg, limit_at, switch_s)
            log.info("job completed", job_id=job_id, instance=state.config.name, attempt=attempt, outputs=len(outputs))
        except asyncio.CancelledError:
            raise  # this dispatcher is stopping: the message is not acked, the job runs again elsewhere
        except Exception as exc:
            if running.hand_back and isinstance(exc, ComfyError):
                await self._hand_back(msg, job_id, state.config.name, attempt)
            else:
                await self._run_failed(exc, msg, job_id, state, attempt, cancelled=running.cancel.is_set())
        finally:
            running.prefetch.close()
            keep_alive.cancel()
            self.affinity.ended(job_id)
            self.running.pop(job_id, None)
            await asyncio.shield(slot.free())

    async def _run_on_comfyui(
        self, job_id: str, state: InstanceState, workflow: dict[str, Any], prompt_id: str, running: _Running
    ) -> RunResult:
        """One attempt on ComfyUI, its progress relayed as events until it ends, each saved output downloaded as
        soon as its node reports it (see prefetch.py)."""
        relay = self._progress_relay(job_id, state.config.name, len(workflow), webhooks=running.webhooks)
        try:
            with tracing.span("comfyui.run", kind="client", instance=state.config.name, prompt_id=prompt_id):
                return await state.client.run(
                    workflow,
                    prompt_id=prompt_id,
                    on_progress=relay.update,
                    stall_timeout_s=self.settings.dispatch_stall_timeout_s,
                    total_timeout_s=self.settings.dispatch_job_timeout_s,
                    cancelled=running.cancel,
                    on_output=running.prefetch.start,
                )
        finally:
            relay.close()  # ComfyUI is done with it: no progress event after the job's final one

    async def _execute(
        self, row: JobRecord, state: InstanceState, attempt: int, limit_at: float, running: _Running, *, adopted: bool
    ) -> tuple[RunResult, Awaitable[object]]:
        """ComfyUI's part of an attempt: its result, and the `started` event's publication (confirmed by JetStream
        while ComfyUI works; to be awaited before any later event)."""
        job_id, instance = row.job_id, state.config.name
        prompt_id = f"{job_id}-{attempt}"
        await self.affinity.starting(job_id)
        if adopted:  # submitted by the predecessor, which published `started`
            log.info("job adopted: following its prompt on ComfyUI", job_id=job_id, instance=instance, attempt=attempt)
            with tracing.span("comfyui.follow", kind="client", instance=instance, prompt_id=prompt_id):
                result = await state.client.follow_submitted(
                    row.workflow,
                    prompt_id=prompt_id,
                    stall_timeout_s=self.settings.dispatch_stall_timeout_s,
                    total_timeout_s=max(limit_at - time.monotonic(), 1.0),
                    cancelled=running.cancel,
                )
            published: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            published.set_result(None)
            return result, published
        workflow = await self._with_input_image(row, state)
        started_event = asyncio.ensure_future(
            self.events.publish(
                JobStarted,
                within_s=_left(limit_at),
                job_id=job_id,
                instance=instance,
                attempt=attempt,
                comfy_prompt_id=prompt_id,
            )
        )
        log.info("job started", job_id=job_id, instance=instance, attempt=attempt)
        try:
            result = await self._run_on_comfyui(job_id, state, workflow, prompt_id, running)
        except BaseException:
            started_event.cancel()
            raise
        return result, started_event

    async def _run_failed(
        self, exc: Exception, msg: Msg, job_id: str, state: InstanceState, attempt: int, *, cancelled: bool
    ) -> None:
        """Record how a run that raised ends. Once a cancel was asked for, the job ends `cancelled` whatever
        ComfyUI did meanwhile (it was stopped, it failed, or it went away)."""
        instance = state.config.name
        bound_log = log.bind(job_id=job_id, instance=instance, attempt=attempt)
        if not cancelled:
            reason = _failure_kind(exc)
            self.failures[instance, reason] = self.failures.get((instance, reason), 0) + 1
        if isinstance(exc, ComfyUnavailable):
            self.pool.mark_down(state, str(exc))
        if cancelled and isinstance(exc, ComfyError):
            await self._cancelled(job_id, instance)
        elif isinstance(exc, ComfyUnavailable):
            await self._retry_or_fail(msg, job_id, instance, attempt, str(exc))
            return  # retried: the message goes back to the stream
        elif isinstance(exc, ComfyInterrupted):
            await self.fail(await self.store.require(job_id), f"interrupted on {instance}: {exc}")
        elif isinstance(exc, (ComfyRejected, ComfyExecutionFailed)):
            bound_log.warning("job failed on the instance", error=str(exc))
            await self.fail(await self.store.require(job_id), str(exc))
        elif isinstance(exc, ComfyError):  # e.g. an output that can no longer be fetched
            await self.fail(await self.store.require(job_id), f"{instance}: {exc}")
        elif isinstance(exc, HubError) and exc.code == ErrorCode.UNAVAILABLE:  # NATS away past the time limit
            bound_log.warning("job failed: NATS was away", error=exc.info.message)
            await self.fail(await self.store.require(job_id), exc.info.message)
        else:
            bound_log.error("job crashed the runner", exc_info=exc)
            await self.fail(await self.store.require(job_id), f"internal dispatcher error: {type(exc).__name__}")
        await msg.ack()

    async def _hand_back(self, msg: Msg, job_id: str, instance: str, attempt: int) -> None:
        """This dispatcher stops: the interrupted job is waiting again and its message is redelivered at once, ahead
        of the jobs that wait behind it."""
        requeued = await self.store.transition(
            job_id, ("running",), status="queued", instance=None, progress_value=0, progress_max=0, progress_percent=0.0
        )
        if not requeued:  # a cancel came first
            await self._cancelled(job_id, instance)
            await msg.ack()
            return
        await msg.nak()
        reason = "handed back: the dispatcher running it is stopping"
        await self.events.publish(JobRetrying, job_id=job_id, instance=instance, attempt=attempt, reason=reason)
        log.info("job handed back to the queue: this dispatcher is stopping", job_id=job_id, instance=instance)

    async def _keep_alive(self, msg: Msg, slot: _Slot) -> None:
        """While the job is ours: keep its message from being redelivered, and its slot lease alive."""
        every = self.settings.dispatch_takeover_s / 4
        while True:
            await asyncio.sleep(every)
            try:
                await msg.in_progress()
                if not await slot.refresh():
                    log.warning("slot lease lost while a job ran", instance=slot.instance)
            except Exception as exc:  # NATS busy electing a leader or reconnecting: keep trying, well before the TTL
                log.warning("could not keep a running job's claim alive; trying again", error=repr(exc))

    async def _with_input_image(self, row: JobRecord, state: InstanceState) -> dict[str, Any]:
        """Upload the job's input image to the instance under the name the workflow was resolved with."""
        if row.input_image_id:
            stored = await self.storage.info(row.input_image_id)
            if stored is None:
                raise ComfyError("the job's input image is no longer in storage")
            data = b"".join([chunk async for chunk in self.storage.read(row.input_image_id)])
            await state.client.upload_image(data, stored.filename, subfolder="hub", overwrite=True)
        return row.workflow

    def _progress_relay(self, job_id: str, instance: str, nodes_total: int, *, webhooks: bool) -> ProgressRelay:
        # Counted from the start of the run: a job that ends within PROGRESS_WRITE_EVERY_S is not written a progress
        # only its end replaces (one database write per short job less; the progress events go out as before).
        last_write = time.monotonic()
        writing: asyncio.Task[bool] | None = None

        async def send(update: ProgressUpdate) -> None:
            nonlocal last_write, writing
            # While NATS is away ticks are skipped, not buffered: a long run would fill nats-py's buffer (and fail
            # the job), and the stale ticks would flood the followers when NATS is back.
            if self.nc.is_connected:
                await self.events.publish_quietly(
                    JobProgress,
                    webhooks=webhooks,
                    job_id=job_id,
                    instance=instance,
                    value=update.value,
                    max=update.max,
                    node=update.node,
                    percent=update.percent,
                    nodes_done=update.nodes_done,
                    nodes_total=update.nodes_total,
                )
            # The row's progress is for queue views, so it is written at most every PROGRESS_WRITE_EVERY_S and
            # beside the run, not in its way.
            now = time.monotonic()
            if now - last_write >= PROGRESS_WRITE_EVERY_S and (writing is None or writing.done()):
                last_write = now
                writing = asyncio.ensure_future(
                    self.store.transition(
                        job_id,
                        ("running",),
                        progress_value=update.value,
                        progress_max=update.max,
                        progress_percent=update.percent,
                    )
                )
                writing.add_done_callback(_log_progress_write_failure)

        return ProgressRelay(send, every_s=PROGRESS_EVENT_EVERY_S, nodes_total=nodes_total)

    async def _store_outputs(
        self,
        job_id: str,
        state: InstanceState,
        result: RunResult,
        limit_at: float,
        prefetch: OutputPrefetch,
        renditions: PreviewStore | None = None,
    ) -> list[OutputFile]:
        """Store the result's outputs in its order, up to OUTPUTS_AT_ONCE side by side: each waits for its download
        and two JetStream acknowledgements, so a batch of four took four times one before. A failed one fails the
        job once the others are stored (none is cut off half written)."""
        at_once = asyncio.Semaphore(OUTPUTS_AT_ONCE)

        async def limited(store: Awaitable[OutputFile]) -> OutputFile:
            async with at_once:
                return await store

        # Saved files and images sent over the WebSocket are the result; previews (type "temp") only when a
        # workflow saves nothing.
        saved = [ref for ref in result.outputs if ref.type == "output"]
        stores = [
            self._fetch_output(ref, job_id, state, limit_at, prefetch, renditions)
            for ref in saved or ([] if result.images else result.outputs)
        ]
        for index, image in enumerate(result.images, start=1):
            # Never a file on the instance: named like SaveImage's files, after the node that sent it.
            filename = f"websocket_{image.node_id}_{index:05}_.{image.extension}"
            stores.append(
                self._keep_output(io.BytesIO(image.data), filename, image.content_type, job_id, state, limit_at)
            )
        stored: list[OutputFile] = []
        for outcome in await asyncio.gather(*(limited(store) for store in stores), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
            stored.append(outcome)
        return stored

    async def _fetch_output(
        self,
        ref: OutputRef,
        job_id: str,
        state: InstanceState,
        limit_at: float,
        prefetch: OutputPrefetch,
        renditions: PreviewStore | None,
    ) -> OutputFile:
        """Download and store one output; with `renditions`, ComfyUI's JPEG of an opaque PNG is fetched meanwhile
        and kept under the output's id before the job completes (the gateway previews from it)."""
        downloaded = await prefetch.take(ref) or await download(state.client, ref)
        with downloaded.spool as spool:
            keep = self._keep_output(spool, ref.filename, downloaded.content_type, job_id, state, limit_at)
            if renditions is None or not wants_rendition(spool, downloaded.content_type):
                return await keep
            fetching = asyncio.ensure_future(fetch_rendition(state.client, ref))
            try:
                output = await keep
            except BaseException:
                fetching.cancel()
                raise
            rendition = await fetching
        if rendition is not None:
            await keep_rendition(renditions, output.output_id, rendition)
        return output

    async def _keep_output(
        self, spool: Any, filename: str, content_type: str, job_id: str, state: InstanceState, limit_at: float
    ) -> OutputFile:
        output = await self._save_output(spool, filename, content_type, job_id, limit_at)
        size = image_size(spool)  # a header read: some microseconds, less than a hop to a thread
        if size is not None:
            output = msgspec.structs.replace(output, width=size[0], height=size[1])
        # Not awaited for confirmation: `completed`, sent after it on the same connection, is.
        await self.events.publish_quietly(OutputStored, job_id=job_id, instance=state.config.name, output=output)
        return output

    async def _save_output(
        self, spool: Any, filename: str, content_type: str, job_id: str, limit_at: float
    ) -> OutputFile:
        """Store one output, riding out a JetStream leader election (a NATS server of a cluster died) and an outage
        of NATS (restarted, crashed) within the job's time limit: ComfyUI's work is not thrown away meanwhile, the
        output waits in `spool` (memory, or a temporary file past 8 MiB)."""

        async def attempt() -> OutputFile:
            spool.seek(0)  # from the start again after a failed attempt
            return await self.storage.save(spool, filename=filename, content_type=content_type, job_id=job_id)

        what = f"storing an output of job {job_id} (within its time limit, HUB_DISPATCH_JOB_TIMEOUT_S)"
        return await through_election(attempt, what, _left(limit_at), nc=self.nc)

    async def _complete(
        self,
        row: JobRecord,
        started: float,
        instance: str,
        outputs: list[OutputFile],
        msg: Msg,
        limit_at: float,
        switch_s: float | None,
    ) -> None:
        job_id = row.job_id
        finished = time.time()
        completed = await self.store.transition(
            job_id, RUNNING_STATUSES, status="completed", finished_at=finished, outputs=msgspec.to_builtins(outputs)
        )
        if not completed:  # ended meanwhile (a replica took it over while NATS was away): one final event is enough
            log.warning("job ended elsewhere while its outputs were stored", job_id=job_id)
            await msg.ack()
            return
        timings = timings_of(msgspec.structs.replace(row, started_at=started, finished_at=finished))
        # Recorded as completed first (in the database, NATS or not); the event waits for NATS within the time limit
        # and is stored once however often it is sent (its event id); the stream message is acked after it.
        await self.events.publish(
            JobCompleted,
            within_s=_left(limit_at),
            webhooks=wants_webhooks(row.request),
            job_id=job_id,
            instance=instance,
            outputs=outputs,
            timings=timings,
            model_switch_ms=None if switch_s is None else round(switch_s * 1000, 1),
        )
        await msg.ack()
        await self._drop_input_image(row)

    async def _cancelled(self, job_id: str, instance: str | None) -> None:
        """A running job's cancel has landed: it ends `cancelled` with the reason its cancel recorded."""
        reason = (await self.store.require(job_id)).error or CANCELLED_BY_CALLER
        await self.store.set(job_id, status="cancelled", finished_at=time.time(), error=reason)
        row = await self.store.require(job_id)
        await self.events.publish(
            JobCancelled,
            webhooks=wants_webhooks(row.request),
            job_id=job_id,
            instance=instance,
            reason=reason,
            timings=timings_of(row),
        )
        await self._drop_input_image(row)

    async def fail(self, row: JobRecord, reason: str) -> None:
        job_id = row.job_id
        changed = await self.store.transition(
            job_id, ACTIVE_STATUSES, status="failed", finished_at=time.time(), error=reason
        )
        if changed:
            row = await self.store.require(job_id)
            log.warning("job failed", job_id=job_id, reason=reason)
            await self.events.publish(
                JobFailed,
                webhooks=wants_webhooks(row.request),
                job_id=job_id,
                instance=row.instance,
                error=reason,
                timings=timings_of(row),
            )
            await self._drop_input_image(row)

    async def _retry_or_fail(self, msg: Msg, job_id: str, instance: str, attempt: int, reason: str) -> None:
        row = await self.store.require(job_id)
        failures = [*row.failures, JobFailure(instance=instance, reason=reason, at=time.time())]
        await self.store.set(job_id, failures=failures)
        if attempt >= self.settings.dispatch_max_attempts:
            summary = "; ".join(f"{f.instance}: {f.reason}" for f in failures)
            await self.fail(await self.store.require(job_id), f"gave up after {attempt} attempts ({summary})")
            await msg.ack()
            return
        await self.store.transition(job_id, ("running",), status="queued", instance=None)
        await self.events.publish(JobRetrying, job_id=job_id, instance=instance, attempt=attempt, reason=reason)
        log.warning("job will be retried on another instance", job_id=job_id, instance=instance, reason=reason)
        await msg.nak()

    async def _drop_input_image(self, row: JobRecord) -> None:
        """A job that has ended needs its copy of the input image no more (it was kept for retries on another
        instance); the outputs stay, for the retention policy to remove."""
        if not row.input_image_id:
            return
        try:
            await self.storage.delete(row.input_image_id)
        except Exception as exc:  # best effort: the job's outcome is recorded already
            log.warning("could not remove a finished job's input image", job_id=row.job_id, error=str(exc))

    # -- cancellation -------------------------------------------------------------------------------

    def cancel_running(self, job_id: str) -> bool:
        running = self.running.get(job_id)
        if running is None:
            return False
        running.cancel.set()
        return True

    async def cancel_queued(self, row: JobRecord, reason: str) -> bool:
        if await self.store.transition(row.job_id, WAITING_STATUSES, status="cancelled", error=reason,
                                       finished_at=time.time()):  # fmt: skip
            fresh = await self.store.require(row.job_id)
            await self.events.publish(
                JobCancelled,
                webhooks=wants_webhooks(fresh.request),
                job_id=row.job_id,
                instance=None,
                reason=reason,
                timings=timings_of(fresh),
            )
            await self._drop_input_image(fresh)
            return True
        return False
