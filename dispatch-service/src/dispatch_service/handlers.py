"""NATS subjects → dispatcher calls. Transport only: decoding and replies are the runtime's job."""

from __future__ import annotations

from contracts import endpoints, topics
from contracts.envelope import Empty
from contracts.messages import instances, jobs
from contracts.runtime.service import ServiceRuntime
from dispatch_service.dispatcher import Dispatcher
from dispatch_service.instance_sync import reload_instances
from dispatch_service.overview import scheduling_view


class _Handlers:
    """The service's request handlers, one method per endpoint, all answered by the dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def submit(self, req: jobs.GenerationRequest) -> jobs.SubmitReply:
        return await self.dispatcher.submit(req)

    async def get_job(self, req: jobs.GetJob) -> jobs.JobView:
        return await self.dispatcher.get(req.job_id)

    async def cancel_job(self, req: jobs.CancelJob) -> jobs.JobView:
        return await self.dispatcher.cancel(req.job_id, req.reason)

    async def list_jobs(self, req: jobs.ListJobs) -> jobs.JobPage:
        return await self.dispatcher.jobs_of(req.api_key_id, req.limit, req.after)

    async def queue_view(self, req: jobs.QueueViewRequest) -> jobs.QueueView:
        return await self.dispatcher.queue_view(req.include_finished, req.limit)

    async def scheduling_view(self, _req: jobs.GetSchedulingView) -> jobs.SchedulingView:
        d = self.dispatcher
        return await scheduling_view(d.scheduler.settings, d.store, d.pool, d.scheduler.affinity.memory)

    async def list_instances(self, _req: instances.ListInstances) -> instances.InstanceList:
        return await self.dispatcher.list_instances()

    async def get_instance(self, req: instances.GetInstance) -> instances.InstanceView:
        return await self.dispatcher.get_instance(req.name)

    async def save_instance(self, req: instances.SaveInstance) -> instances.InstanceView:
        return await self.dispatcher.save_instance(req.instance, req.original_name)

    async def delete_instance(self, req: instances.DeleteInstance) -> Empty:
        await self.dispatcher.delete_instance(req.name)
        return Empty()

    async def test_instance(self, req: instances.ProbeInstance) -> instances.InstanceHealth:
        return await self.dispatcher.test_instance(req.base_url, req.auth_header)

    async def delete_outputs(self, req: jobs.DeleteOutputs) -> jobs.DeletedOutputs:
        return await self.dispatcher.delete_outputs(req.output_ids, req.job_ids)

    async def cancel_running(self, job_id: str) -> None:
        self.dispatcher.scheduler.cancel_running(job_id)

    async def reload_instances(self, _changed: Empty) -> None:
        await reload_instances(self.dispatcher)


def register(runtime: ServiceRuntime, dispatcher: Dispatcher) -> None:
    handlers = _Handlers(dispatcher)
    # Fan-out every replica hears: a cancel (the replica running the job interrupts it) and a change of the
    # instances (every replica reloads its pool).
    runtime.subscribe(topics.Dispatch.CANCEL, handlers.cancel_running)
    runtime.subscribe(topics.Dispatch.INSTANCES_CHANGED, handlers.reload_instances)
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
    runtime.endpoint(endpoints.Dispatch.SCHEDULING_VIEW, handlers.scheduling_view)
