"""The gateway's calls into the hub: typed NATS requests and a job's generation events (no business logic)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import msgspec
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.events import GenerationEvent
from contracts.messages.jobs import CancelJob, GenerationRequest, GetJob, JobPage, JobView, ListJobs, SubmitReply
from contracts.messages.render_types import ListRenderTypes, RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, ListStyles, StyleList
from contracts.runtime.bus import (
    NOBODY_PAUSE_S,  # no dispatcher listens: asked again this often until one is back
    RETRY_AFTER_S,
    NobodyListensError,
    call,
    first_job_event,
    job_events,
    require_connection,
    unless_disconnected,
)
from contracts.runtime.images import checked_image_type
from contracts.runtime.storage import ObjectStoreOutputs, PreviewStore, input_image_staged
from gateway.idempotency import HEADER, REFUSALS, IdempotencyKeys

# A submission not answered within this is asked again, under the same job id: the dispatcher replica that took it
# may have died (kill -9), and its answer would never come (nats-py reports that only at the request's timeout,
# 30 s). A replica still working on it answers the repeat from that same work; a restarted one answers the job it
# finds recorded, or makes it. So a repeat never makes a second job.
SUBMIT_ASK_AGAIN_S = 2.0


async def _checked_in_thread(data: bytes, field: str) -> str:
    return await asyncio.to_thread(checked_image_type, data, field)


class HubClient:
    def __init__(
        self,
        nc: NatsClient,
        *,
        timeout_s: float,
        check_callback: Callable[[GenerationRequest], Awaitable[None]] | None = None,
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self._check_callback = check_callback  # refuses a callback_url that would never be delivered
        self.timeout_s = timeout_s
        self.outputs = ObjectStoreOutputs(nc.jetstream())
        self.previews = PreviewStore(nc.jetstream(), replicas=replicas)  # JPEG renditions of outputs, if kept
        self.idempotency = IdempotencyKeys(nc.jetstream(), replicas=replicas)

    async def submit(
        self, generation: GenerationRequest, idempotency_key: str | None = None, key_field: str = HEADER
    ) -> SubmitReply:
        """Submit a job; with `idempotency_key` (named `key_field` to the caller), a repeat answers the first job."""
        if generation.callback_url is not None:
            if self._check_callback is None:
                raise HubError(ErrorCode.INVALID_REQUEST, "callback_url is not taken here", field="callback_url")
            await self._check_callback(generation)
        await require_connection(self.nc)  # before staging an input image, which would wait for NATS too
        if idempotency_key is None:  # the job id is fixed here all the same, so the submission can be asked again
            return await self._submit(msgspec.structs.replace(generation, job_id=uuid.uuid4().hex))
        # 503 at once if NATS goes away meanwhile (the claim's answer is lost; the same key finds its job again).
        claiming = self.idempotency.claim(generation, idempotency_key, key_field)
        claim = await unless_disconnected(self.nc, claiming, "claiming the Idempotency-Key")
        try:
            return await self._submit(msgspec.structs.replace(generation, job_id=claim.job_id))
        except HubError as exc:
            if exc.code in REFUSALS:  # nothing was made: the corrected request may use the key
                await self.idempotency.free(claim)
            raise

    async def _submit(self, generation: GenerationRequest) -> SubmitReply:
        async with input_image_staged(self.outputs, generation, _checked_in_thread) as staged:
            # 503 at once if NATS goes away meanwhile (a retry with the same Idempotency-Key makes no second job).
            return await unless_disconnected(self.nc, self._ask_dispatcher(staged), "submitting the job")

    async def _ask_dispatcher(self, generation: GenerationRequest) -> SubmitReply:
        """The dispatcher's answer to a submission (its job id fixed), asked again every SUBMIT_ASK_AGAIN_S until one
        comes: the first answer wins. While no dispatcher listens (one died and its restart is under way), it is
        asked every NOBODY_PAUSE_S for up to HUB_REQUEST_TIMEOUT_S, then UNAVAILABLE (503 + Retry-After)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * self.timeout_s  # enhancing the prompt may take the LLM's whole timeout
        asks: dict[asyncio.Future[SubmitReply], float] = {}  # pending asks -> when each was sent
        nobody_since: float | None = None  # since when the repeats found no dispatcher listening
        next_ask_at = loop.time()
        try:
            while True:
                if loop.time() >= next_ask_at:
                    left_s = max(deadline - loop.time(), 0.1)
                    ask = call(self.nc, endpoints.Dispatch.JOBS_SUBMIT, generation, timeout=left_s)
                    asks[asyncio.ensure_future(ask)] = loop.time()
                    next_ask_at = loop.time() + SUBMIT_ASK_AGAIN_S
                wait_s = max(min(next_ask_at, deadline) - loop.time(), 0.01)
                if not asks:  # every ask found nobody listening: the next one goes out after a pause
                    await asyncio.sleep(wait_s)
                    continue
                done, _ = await asyncio.wait(asks, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del asks[task]
                    if not isinstance(task.exception(), NobodyListensError) or (not asks and nobody_since is None):
                        return task.result()  # an answer, a refusal, or no dispatcher at all from the start
                    nobody_since = nobody_since or loop.time()
                    next_ask_at = min(next_ask_at, loop.time() + NOBODY_PAUSE_S)
                nobody_since = _still_nobody(nobody_since, asks.values(), loop.time())
                if nobody_since is not None and loop.time() - nobody_since > self.timeout_s:
                    raise _no_dispatcher_back(self.timeout_s)
        finally:
            for task in asks:
                task.cancel()

    async def first_event(self, job_id: str) -> GenerationEvent | None:
        """The job's first stored event (its `accepted`, which names the key that made it), from the events stream."""
        return await first_job_event(self.nc, job_id)

    async def job(self, job_id: str) -> JobView:
        return await call(self.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id), timeout=self.timeout_s)

    async def cancel(self, job_id: str, reason: str) -> JobView:
        return await call(
            self.nc,
            endpoints.Dispatch.JOBS_CANCEL,
            CancelJob(job_id=job_id, reason=reason),
            timeout=self.timeout_s,
        )

    async def jobs_of(self, api_key_id: str | None, limit: int, after: str | None) -> JobPage:
        """One page of the jobs made with `api_key_id` (None: without a key), newest first."""
        listing = ListJobs(api_key_id=api_key_id, limit=limit, after=after)
        return await call(self.nc, endpoints.Dispatch.JOBS_LIST, listing, timeout=self.timeout_s)

    async def render_types(self) -> RenderTypeList:
        listing = await call(
            self.nc,
            endpoints.Registry.LIST,
            ListRenderTypes(include_disabled=False),
            timeout=self.timeout_s,
        )
        return listing

    async def styles(self, render_type: str | None = None) -> StyleList:
        listing = await call(
            self.nc,
            endpoints.Prompt.STYLES_LIST,
            ListStyles(render_type=render_type, include_disabled=False),
            timeout=self.timeout_s,
        )
        return listing

    async def preview(self, build: BuildPrompt) -> BuiltPrompt:
        return await call(self.nc, endpoints.Prompt.PREVIEW, build, timeout=3 * self.timeout_s)

    async def events(self, job_id: str) -> AsyncIterator[GenerationEvent]:
        """Every event of one job from its first, in order, until the caller stops (replayed from JetStream)."""
        async for event in job_events(self.nc, job_id):
            if event is not None:
                yield event


def _no_dispatcher_back(waited_s: float) -> HubError:
    return HubError(
        ErrorCode.UNAVAILABLE,
        f"the dispatcher that took this submission stopped answering and none was back within {waited_s:g} s; "
        f"try again in {RETRY_AFTER_S} s (with the same idempotency key a repeat makes no second job)",
        details={"retry_after_s": RETRY_AFTER_S},
    )


def _still_nobody(nobody_since: float | None, sent: Iterable[float], now: float) -> float | None:
    """None once an ask sent after `nobody_since` has waited SUBMIT_ASK_AGAIN_S for its answer: a dispatcher has it
    (one nobody listens for fails within a fraction of a second) and works on it, maybe long (prompt enhancement)."""
    if nobody_since is not None and any(nobody_since < at < now - SUBMIT_ASK_AGAIN_S for at in sent):
        return None
    return nobody_since
