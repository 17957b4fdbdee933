"""The dispatcher's use cases: submit, follow, cancel and list jobs; manage the instance pool."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import structlog
from nats.aio.client import Client as NatsClient

from contracts import topics
from contracts.envelope import Empty
from contracts.errors import ErrorCode, HubError
from contracts.messages.events import JobAccepted, JobQueued
from contracts.messages.instances import Instance, InstanceHealth, InstanceList, InstanceView
from contracts.messages.jobs import (
    DeletedOutputs,
    GenerationRequest,
    JobPage,
    JobStatus,
    JobView,
    QueueView,
    SubmitReply,
    wants_webhooks,
)
from contracts.runtime import tracing
from contracts.runtime.bus import publish
from contracts.runtime.logs import get_logger
from contracts.runtime.outbound_url import PUBLIC_ONLY, UrlAllowlist
from contracts.runtime.storage import OutputStorage
from dispatch_service import instances
from dispatch_service.comfyui import ComfyClient
from dispatch_service.events import EventPublisher
from dispatch_service.fair_share import Standing, fair_position
from dispatch_service.jobs import PreparedJob, Upstream, is_final, job_view, prepare_job
from dispatch_service.pool import InstanceState, Pool
from dispatch_service.scheduler import Scheduler
from dispatch_service.store import WAITING_STATUSES, JobRecord, JobStore, WaitingLimitError

log = get_logger("dispatcher")
# When a key is at its waiting limit before any job has completed here, there is no run time to go by.
DEFAULT_RETRY_AFTER_S = 10.0
# How long job views share fair share's standings at most when no job row is written here meanwhile (the bound on
# what other replicas' writes take to show in a view).
VIEW_STANDINGS_TTL_S = 1.0


@dataclass(frozen=True)
class _ViewBasis:
    """What every job view of a moment reads alike: fair share's standings ([] when it is off) and the recent run
    time (None before any job completed)."""

    standings: list[Standing]
    run_s: float | None


@dataclass(frozen=True)
class _SharedBasis:
    writes: int  # JobStore.writes when it was asked for
    at: float  # monotonic
    basis: asyncio.Future[_ViewBasis]


@dataclass(kw_only=True, eq=False, repr=False)  # a service object: compared, hashed and shown as itself
class Dispatcher:
    nc: NatsClient
    pool: Pool
    scheduler: Scheduler
    store: JobStore
    events: EventPublisher
    storage: OutputStorage
    upstream: Upstream
    input_url_allow: UrlAllowlist = PUBLIC_ONLY
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    # job id -> its submission being accepted
    _accepting: dict[str, asyncio.Future[SubmitReply]] = field(default_factory=dict, init=False)
    _view_basis: _SharedBasis | None = field(default=None, init=False)

    # -- jobs ---------------------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> SubmitReply:
        """Accept a job. The gateway asks again (same job id) while no answer comes, in case the replica that took
        the submission died: a repeat of one still being accepted here shares its work and its answer."""
        if request.job_id is None:
            return await self._accept(request)
        accepting = self._accepting.get(request.job_id)
        if accepting is None:
            accepting = self._accepting[request.job_id] = asyncio.ensure_future(self._accept(request))
            accepting.add_done_callback(lambda done: self._accepted(request.job_id or "", done))
        return await asyncio.shield(accepting)  # one caller giving up does not stop the others' answer

    def _accepted(self, job_id: str, done: asyncio.Future[SubmitReply]) -> None:
        self._accepting.pop(job_id, None)
        if not done.cancelled():
            done.exception()  # seen: its callers have it, or have given up on it

    async def _accept(self, request: GenerationRequest) -> SubmitReply:
        if request.job_id is None:
            prepared = await self._prepare(request)
        else:  # fixed by the gateway: from here on this task's log lines name the job
            structlog.contextvars.bind_contextvars(job_id=request.job_id)
            found = await self._prepared_unless_repeat(request, request.job_id)
            if isinstance(found, JobRecord):
                return _reply_of(found)  # a repeat of an idempotency key's submission: the job made the first time
            prepared = found
        job_id = prepared.job_id
        structlog.contextvars.bind_contextvars(job_id=job_id)  # (a job id made here, by prepare_job)
        tracing.tag(job_id=job_id, render_type=prepared.resolved.render_type)
        try:
            await self.store.insert(prepared, max_waiting=request.max_waiting)
        except WaitingLimitError as reached:  # its key's other submissions of the same moment came first
            if prepared.input_image_id is not None:
                await self.storage.delete(prepared.input_image_id)
            raise await self._waiting_limit_error(request, reached.waiting) from None
        except Exception:
            if request.job_id is None or (first := await self.store.get(job_id)) is None:
                raise
            # Two submissions with one idempotency key at once: the other one made the job.
            if prepared.input_image_id is not None:
                await self.storage.delete(prepared.input_image_id)
            return _reply_of(first)
        params = prepared.resolved.params
        accepted = self.events.publish(
            JobAccepted,
            webhooks=wants_webhooks(prepared.request),
            job_id=job_id,
            request=prepared.request,
            render_type=prepared.resolved.render_type,
            positive_prompt=prepared.built.positive,
            negative_prompt=prepared.built.negative,
            styles=prepared.built.styles_applied,
            seed=params.seed,
            width=params.width,
            height=params.height,
            enhancement_error=prepared.built.enhancement_error,
        )
        reply = SubmitReply(job_id=job_id, status="queued", render_type=prepared.resolved.render_type, seed=params.seed)
        self.pool.want_folders(prepared.resolved.requirements)
        never = self.pool.why_never(prepared.resolved.requirements)
        if never:  # fail at once rather than wait for an instance that will never come
            await accepted
            await self.scheduler.fail(await self.store.require(job_id), never)
            return msgspec.structs.replace(reply, status="failed", error=never)
        # Published in this order on one connection, so the stream holds `accepted` before `queued`.
        try:
            await asyncio.gather(accepted, self.scheduler.enqueue(job_id, request.api_key_id))
        except HubError as exc:  # the queue is full: the job ends now, failed with the reason, and the caller hears it
            await self.scheduler.fail(await self.store.require(job_id), exc.info.message)
            raise
        # The job is on the stream: answer now, record `queued` meanwhile. Should this process die before
        # that, the row is still `accepted` and is queued again at start (a duplicate message never runs
        # a job twice: see JobStore.claim).
        self._background(self._mark_queued(job_id))
        return reply

    async def _prepare(self, request: GenerationRequest) -> PreparedJob:
        await self._check_waiting_limit(request)
        return await prepare_job(request, self.upstream, self.storage, self.input_url_allow)

    async def _prepared_unless_repeat(self, request: GenerationRequest, job_id: str) -> PreparedJob | JobRecord:
        """The job made by an earlier submission of `job_id`, or else this one prepared. The lookup runs beside the
        preparation (a prompt build and a resolve, two NATS requests), which a repeat throws away; not beside an LLM
        rewrite, too costly to make for nothing."""
        if request.enhance_prompt:
            return await self.store.get(job_id) or await self._prepare(request)
        lookup = asyncio.ensure_future(self.store.get(job_id))
        try:
            prepared = await self._prepare(request)
        except Exception:
            if (first := await lookup) is not None:
                return first  # a repeat gets its job, whatever this submission's preparation found wrong
            raise
        except BaseException:  # cancelled: the lookup too
            lookup.cancel()
            raise
        if (first := await lookup) is not None:
            if prepared.input_image_id is not None:
                await self.storage.delete(prepared.input_image_id)
            return first
        return prepared

    async def _check_waiting_limit(self, request: GenerationRequest) -> None:
        """Refuse, before anything is recorded (or prepared), a job whose key already has its `max_waiting` jobs
        waiting. Submissions at once may all pass this; the insert checks again (JobStore.insert)."""
        if request.api_key_id is None or request.max_waiting is None:
            return
        waiting = await self.store.waiting_of(request.api_key_id)
        if waiting >= request.max_waiting:
            raise await self._waiting_limit_error(request, waiting)

    async def _waiting_limit_error(self, request: GenerationRequest, waiting: int) -> HubError:
        # One of the key's jobs starts about one run time from now (measured; a guess before any job ran).
        retry_after_s = max(1, math.ceil(await self.store.recent_run_s() or DEFAULT_RETRY_AFTER_S))
        return HubError(
            ErrorCode.LIMIT_EXCEEDED,
            f"this key already has {waiting} jobs waiting, its limit (max_waiting {request.max_waiting}); "
            f"retry in about {retry_after_s} s, when one of them has started",
            details={"limit": "max_waiting", "max": request.max_waiting, "retry_after_s": retry_after_s},
        )

    async def _queue(self, job_id: str, api_key_id: str | None) -> None:
        await self.scheduler.enqueue(job_id, api_key_id)
        await self._mark_queued(job_id)

    async def _mark_queued(self, job_id: str) -> None:
        if await self.store.transition(job_id, ("accepted",), status="queued"):
            await self.events.publish(JobQueued, job_id=job_id)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The job stays `accepted` and is queued again when a dispatcher starts.
            log.error("recording a queued job failed", exc_info=task.exception())

    async def requeue_unqueued(self) -> int:
        """Jobs recorded but not yet on the stream (the dispatcher died in between) are queued now."""
        unqueued = await self.store.unqueued()
        for job_id, api_key_id in unqueued:
            await self._queue(job_id, api_key_id)
        if unqueued:
            log.info("re-queued jobs accepted before a restart", count=len(unqueued))
        return len(unqueued)

    async def get(self, job_id: str) -> JobView:
        row = await self.store.require(job_id)
        if row.status not in WAITING_STATUSES:
            return job_view(row)
        basis = await self._shared_view_basis()
        standings = basis.standings
        mine = next((s for s in standings if s.api_key_id == row.api_key_id), None)
        # A job nearer the back of its key's jobs (by when it came) is placed by counting the jobs after it: the
        # last of 10,000 counts none, not 9,999.
        from_back = mine is not None and row.accepted_at - mine.oldest_accepted_at > time.time() - row.accepted_at
        in_key = await self.store.key_queue_position(row, key_waiting=mine.waiting if from_back and mine else None)
        position = fair_position(standings, row.api_key_id, in_key) if mine else None
        if position is None:  # fair share off, or its standings do not have the key yet: the order of arrival
            position = await self.store.queue_position(row)
        view = job_view(row, position)
        view.key_queue_position = in_key
        view.estimated_start_at = self._estimated_start(position, basis.run_s)
        return view

    async def _shared_view_basis(self) -> _ViewBasis:
        """The views' basis, shared by the views of a moment: the standings count every waiting job, and 1,000
        callers waiting on their jobs ask at once. Asked again after any write of a job row here (so a view here is
        exact), else after VIEW_STANDINGS_TTL_S."""
        shared = self._view_basis
        if shared is None or shared.writes != self.store.writes or time.monotonic() - shared.at >= VIEW_STANDINGS_TTL_S:
            asked = asyncio.ensure_future(self._view_basis_now())
            shared = self._view_basis = _SharedBasis(self.store.writes, time.monotonic(), asked)
        try:
            return await asyncio.shield(shared.basis)
        except Exception:
            if self._view_basis is shared:  # not kept for the next views
                self._view_basis = None
            raise

    async def _view_basis_now(self) -> _ViewBasis:
        standings = await self.scheduler.queues.standings() if self.scheduler.queues.fair else []
        return _ViewBasis(standings=standings, run_s=await self.store.recent_run_s())

    def _estimated_start(self, position: int, run_s: float | None) -> float | None:
        """When the job at `position` of the queue should start: the jobs ahead of it, and those running, leave the
        slots one run time per wave (the first wave's remaining time is not known here, so a whole run is counted)."""
        slots = sum(s.config.slots for s in self.pool.states.values() if s.available)
        if run_s is None or slots == 0:
            return None
        waves = (position - 1) // slots + 1
        return time.time() + waves * run_s

    async def cancel(self, job_id: str, reason: str) -> JobView:
        """Cancel a job and answer at once: a waiting job is `cancelled` now; a running one is `cancelling` until
        ComfyUI stops it (its interrupt lands when the next node starts), then `cancelled` with the same reason."""
        row = await self.store.require(job_id)
        if is_final(row) or await self.scheduler.cancel_queued(row, reason):
            return await self.get(job_id)
        if await self.store.transition(job_id, ("running",), status="cancelling", error=reason):
            # It runs (here or on another replica): every replica hears this, the one running it interrupts.
            await publish(self.nc, topics.Dispatch.CANCEL, job_id)
        return await self.get(job_id)

    async def jobs_of(self, api_key_id: str | None, limit: int, after: str | None) -> JobPage:
        """One page of a caller's jobs, newest first; `after` is the `next_after` of the page before."""
        rows = await self.store.of_caller(api_key_id, limit + 1, _page_mark(after) if after else None)
        more = len(rows) > limit
        rows = rows[:limit]
        next_after = f"{rows[-1].accepted_at!r}/{rows[-1].job_id}" if more else None
        return JobPage(jobs=[job_view(r) for r in rows], next_after=next_after)

    async def queue_view(self, include_finished: bool, limit: int) -> QueueView:
        rows = await (self.store.recent(limit) if include_finished else self.store.active(limit))
        queued_order = [r.job_id for r in sorted(rows, key=lambda r: r.accepted_at) if r.status in WAITING_STATUSES]
        views = [job_view(r, queued_order.index(r.job_id) + 1 if r.job_id in queued_order else None) for r in rows]
        return QueueView(
            jobs=views,
            queued=sum(v.status in WAITING_STATUSES for v in views),
            running=sum(v.status == "running" for v in views),
        )

    async def delete_outputs(self, output_ids: list[str], job_ids: list[str]) -> DeletedOutputs:
        """Retention: delete output files, then mark them removed in their jobs, so that a job's view says when its
        images went instead of listing URLs that answer 404. A file already gone counts as removed too."""
        deleted: list[str] = []
        missing: list[str] = []
        for output_id in output_ids:
            (deleted if await self.storage.delete(output_id) else missing).append(output_id)
        if job_ids:
            await self.store.mark_outputs_removed(job_ids, set(deleted) | set(missing), time.time())
        return DeletedOutputs(deleted=deleted, missing=missing)

    # -- instances ----------------------------------------------------------------------------------

    async def reload_instances(self) -> None:
        await self.pool.set_instances(await instances.list_instances())

    async def list_instances(self) -> InstanceList:
        render_types = (await self.upstream.list_render_types()).render_types
        views = []
        for state in self.pool.states.values():
            compatible = [rt.name for rt in render_types if rt.enabled and state.can_run(rt.requirements)]
            views.append(self._view(state, compatible))
        return InstanceList(instances=sorted(views, key=lambda v: v.instance.name))

    def _view(self, state: InstanceState, compatible: list[str]) -> InstanceView:
        return InstanceView(
            instance=instances.masked(state.config),
            health=state.health,
            running_jobs=state.running,
            compatible_render_types=compatible,
        )

    async def get_instance(self, name: str) -> InstanceView:
        await instances.get_instance(name)
        state = self.pool.states.get(name)
        if state is None:
            await self.reload_instances()
            state = self.pool.states[name]
        render_types = (await self.upstream.list_render_types()).render_types
        return self._view(state, [rt.name for rt in render_types if rt.enabled and state.can_run(rt.requirements)])

    async def save_instance(self, instance: Instance, original_name: str | None) -> InstanceView:
        saved = await instances.save_instance(instance, original_name)
        await self.reload_instances()
        await publish(self.nc, topics.Dispatch.INSTANCES_CHANGED, Empty())  # the other replicas reload too
        return await self.get_instance(saved.name)

    async def delete_instance(self, name: str) -> None:
        await instances.delete_instance(name)
        await self.reload_instances()
        await publish(self.nc, topics.Dispatch.INSTANCES_CHANGED, Empty())

    async def test_instance(self, base_url: str, auth_header: str | None) -> InstanceHealth:
        """Probe a URL the way the health loop does, without saving it."""
        url = instances.normalize_base_url(base_url)
        header = instances.validate_auth_header(auth_header)
        state = InstanceState(
            config=Instance(name="probe", base_url=url, auth_header=header),
            client=ComfyClient(url, auth_header=header, timeout_s=5),
        )
        try:
            await Pool(health_interval_s=60).probe(state)
        finally:
            await state.client.aclose()
        return state.health


def _page_mark(after: str) -> tuple[float, str]:
    """`next_after` of a page ("<accepted_at>/<job_id>") read back; anything else is refused, naming the field."""
    accepted_at, _, job_id = after.rpartition("/")
    try:
        return float(accepted_at), job_id
    except ValueError:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            "`after` is not a page mark this hub gave: pass the `next_after` of the previous page, or omit it",
            field="after",
        ) from None


def _reply_of(job: JobRecord) -> SubmitReply:
    return SubmitReply(
        job_id=job.job_id,
        status=cast(JobStatus, job.status),  # the store writes only JobStatus values
        render_type=job.render_type,
        seed=int(job.seed) if job.seed is not None else None,
        error=job.error,
    )
