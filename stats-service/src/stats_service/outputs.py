"""The output files, asked of their owner: deleting them means asking the dispatcher (for retention)."""

from __future__ import annotations

from contracts import endpoints
from contracts.messages.jobs import DeletedOutputs, DeleteOutputs
from contracts.runtime.bus import call
from contracts.runtime.service import ServiceRuntime
from stats_service import retention


def output_remover(runtime: ServiceRuntime) -> retention.OutputRemover:
    async def remove(output_ids: list[str], job_ids: list[str]) -> DeletedOutputs:
        return await call(
            runtime.nc,
            endpoints.Dispatch.OUTPUTS_DELETE,
            DeleteOutputs(output_ids=output_ids, job_ids=job_ids),
            timeout=runtime.settings.request_timeout_s,
        )

    return remove
