"""NATS subjects → dispatcher calls. Transport only: decoding and replies are the runtime's job."""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg

from contracts import endpoints, subjects
from contracts.endpoints import Endpoint, Req, Res
from contracts.envelope import Empty
from contracts.messages.instances import (
    DeleteInstance,
    GetInstance,
    InstanceHealth,
    InstanceList,
    InstanceView,
    ListInstances,
    ProbeInstance,
    SaveInstance,
)
from contracts.messages.jobs import (
    CancelJob,
    DeletedOutputs,
    DeleteOutputs,
    GenerationRequest,
    GetJob,
    JobPage,
    JobView,
    ListJobs,
    QueueView,
    QueueViewRequest,
    SubmitReply,
)
from contracts.messages.render_types import ListRenderTypes, RenderTypeList, ResolvedWorkflow, ResolveRenderType
from contracts.messages.styles import BuildPrompt, BuiltPrompt
from contracts.runtime.bus import call
from contracts.runtime.service import ServiceRuntime
from dispatch_service.dispatcher import Dispatcher

D = subjects.Dispatch


class NatsUpstream:
    """The registry and prompt services, asked over NATS.

    The render type list (for the default render type and instance compatibility) is cached until the
    registry announces a change, and for at most `RENDER_TYPES_TTL_S` in case an announcement was missed.
    """

    RENDER_TYPES_TTL_S = 30.0

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        self._render_types: RenderTypeList | None = None
        self._render_types_at = 0.0

    async def watch_registry(self) -> None:
        async def forget(_msg: Msg) -> None:
            self._render_types = None

        await self._runtime.nc.subscribe(subjects.Registry.CHANGED, cb=forget)

    async def list_render_types(self) -> RenderTypeList:
        if self._render_types is None or time.monotonic() - self._render_types_at > self.RENDER_TYPES_TTL_S:
            fetched_at = time.monotonic()
            self._render_types = await self._call(endpoints.Registry.LIST, ListRenderTypes(include_disabled=True))
            self._render_types_at = fetched_at
        return self._render_types

    async def resolve(self, req: ResolveRenderType) -> ResolvedWorkflow:
        return await self._call(endpoints.Registry.RESOLVE, req)

    async def build_prompt(self, req: BuildPrompt) -> BuiltPrompt:
        # Enhancement may call a local LLM: allow it the LLM's own timeout on top of ours.
        return await self._call(endpoints.Prompt.BUILD, req, extra_s=120 if req.enhance else 0)

    async def _call(self, endpoint: Endpoint[Req, Res], message: Req, extra_s: float = 0) -> Res:
        timeout = self._runtime.settings.request_timeout_s + extra_s
        return await call(self._runtime.nc, endpoint, message, timeout=timeout)


class _Handlers:
    """The service's request handlers, one method per endpoint, all answered by the dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def submit(self, req: GenerationRequest) -> SubmitReply:
        return await self.dispatcher.submit(req)

    async def get_job(self, req: GetJob) -> JobView:
        return await self.dispatcher.get(req.job_id)

    async def cancel_job(self, req: CancelJob) -> JobView:
        return await self.dispatcher.cancel(req.job_id, req.reason)

    async def list_jobs(self, req: ListJobs) -> JobPage:
        return await self.dispatcher.jobs_of(req.api_key_id, req.limit, req.after)

    async def queue_view(self, req: QueueViewRequest) -> QueueView:
        return await self.dispatcher.queue_view(req.include_finished, req.limit)

    async def list_instances(self, _req: ListInstances) -> InstanceList:
        return await self.dispatcher.list_instances()

    async def get_instance(self, req: GetInstance) -> InstanceView:
        return await self.dispatcher.get_instance(req.name)

    async def save_instance(self, req: SaveInstance) -> InstanceView:
        return await self.dispatcher.save_instance(req.instance, req.original_name)

    async def delete_instance(self, req: DeleteInstance) -> Empty:
        await self.dispatcher.delete_instance(req.name)
        return Empty()

    async def test_instance(self, req: ProbeInstance) -> InstanceHealth:
        return await self.dispatcher.test_instance(req.base_url, req.auth_header)

    async def delete_outputs(self, req: DeleteOutputs) -> DeletedOutputs:
        return await self.dispatcher.delete_outputs(req.output_ids, req.job_ids)


def register(runtime: ServiceRuntime, dispatcher: Dispatcher) -> None:
    handlers = _Handlers(dispatcher)
    runtime.endpoint(endpoints.Dispatch.JOBS_SUBMIT, handlers.submit)
    runtime.endpoint(endpoints.Dispatch.JOBS_GET, handlers.get_job)
    runtime.endpoint(endpoints.Dispatch.JOBS_CANCEL, handlers.cancel_job)
    runtime.endpoint(endpoints.Dispatch.JOBS_LIST, handlers.list_jobs)
    runtime.endpoint(endpoints.Dispatch.QUEUE_VIEW, handlers.queue_view)
    runtime.endpoint(endpoints.Dispatch.INSTANCES_LIST, handlers.list_instances)
    runtime.endpoint(endpoints.Dispatch.INSTANCES_GET, handlers.get_instance)
    runtime.endpoint(endpoints.Dispatch.INSTANCES_SAVE, handlers.save_instance)
    runtime.endpoint(endpoints.Dispatch.INSTANCES_DELETE, handlers.delete_instance)
    runtime.endpoint(endpoints.Dispatch.INSTANCES_TEST, handlers.test_instance)
    runtime.endpoint(endpoints.Dispatch.OUTPUTS_DELETE, handlers.delete_outputs)


async def subscribe_control(runtime: ServiceRuntime, dispatcher: Dispatcher) -> None:
    """Fan-out messages every replica hears: a cancel (the replica running the job interrupts it) and a
    change of the instances (every replica reloads its pool)."""

    async def on_cancel(msg: Msg) -> None:
        dispatcher.scheduler.cancel_running(msg.data.decode())

    async def on_instances_changed(_msg: Msg) -> None:
        try:
            await dispatcher.reload_instances()
        except Exception:
            runtime.log.exception("could not reload the instances")

    await runtime.nc.subscribe(D.CONTROL_CANCEL, cb=on_cancel)
    await runtime.nc.subscribe(D.CONTROL_INSTANCES, cb=on_instances_changed)


async def resync_instances(runtime: ServiceRuntime, dispatcher: Dispatcher, every_s: float = 30.0) -> None:
    """Reload the instances now and then, in case a change message was missed (NATS core is at most once)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await dispatcher.reload_instances()
        except Exception:
            runtime.log.exception("could not reload the instances")
