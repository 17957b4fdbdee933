"""The gateway's calls into the hub: typed NATS requests and a job's generation events (no business logic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.events import GenerationEvent
from contracts.messages.jobs import CancelJob, GenerationRequest, GetJob, JobPage, JobView, ListJobs, SubmitReply
from contracts.messages.render_types import ListRenderTypes, RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, ListStyles, StyleList
from contracts.runtime.bus import call, job_events, require_connection, unless_disconnected
from contracts.runtime.images import checked_image_type
from contracts.runtime.storage import ObjectStoreOutputs, input_image_staged
from gateway.idempotency import HEADER, REFUSALS, IdempotencyKeys


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
        if idempotency_key is None:
            return await self._submit(generation)
        claim = await self.idempotency.claim(generation, idempotency_key, key_field)
        try:
            return await self._submit(msgspec.structs.replace(generation, job_id=claim.job_id))
        except HubError as exc:
            if exc.code in REFUSALS:  # nothing was made: the corrected request may use the key
                await self.idempotency.free(claim)
            raise

    async def _submit(self, generation: GenerationRequest) -> SubmitReply:
        async with input_image_staged(self.outputs, generation, _checked_in_thread) as staged:
            # Enhancing the prompt may take the LLM's whole timeout before the job is accepted.
            asked = call(self.nc, endpoints.Dispatch.JOBS_SUBMIT, staged, timeout=3 * self.timeout_s)
            # 503 at once if NATS goes away meanwhile (a retry with the same Idempotency-Key makes no second job).
            return await unless_disconnected(self.nc, asked, "submitting the job")

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
