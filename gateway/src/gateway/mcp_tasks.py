"""MCP tasks for generate_image, in both eras: the 2025-11-25 core tasks (`params.task`, `tasks/get`,
`tasks/result`, `tasks/cancel`) and the 2026-07-28 tasks extension (`io.modelcontextprotocol/tasks`:
`resultType: "task"`, `tasks/get` with the result inlined, `tasks/update`, `tasks/cancel`).

A task is the hub's job seen through MCP: the task id is the job id and its state is the job's state in the
dispatch service. Nothing is kept in the gateway, so any gateway replica answers any task and a task outlives
the gateway process that created it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
from pydantic import Field

from contracts.messages.events import JobProgress
from contracts.messages.jobs import JobView

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
RELATED_TASK_META = "io.modelcontextprotocol/related-task"
TASKS_VERSION = "2025-11-25"  # the one handshake version with core tasks
MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
TERMINAL = ("completed", "failed", "cancelled")
# The job stays in the dispatch service's database until an admin removes it: no expiry to announce.
TASK_TTL_MS: int | None = None


class TaskRef(types.RequestParams):
    task_id: str = Field(alias="taskId", min_length=1)


class TaskUpdate(TaskRef):
    input_responses: dict[str, Any] = Field(alias="inputResponses", default_factory=dict)


def declares_tasks_extension(params: Mapping[str, Any] | None) -> bool:
    """Whether a 2026-era request's per-request capabilities include the tasks extension."""
    meta = (params or {}).get("_meta") or {}
    capabilities = meta.get(CLIENT_CAPABILITIES_META) or {}
    extensions = capabilities.get("extensions") or {}
    return isinstance(extensions, Mapping) and TASKS_EXTENSION in extensions


def missing_capability_data() -> dict[str, Any]:
    return {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}


def _iso(epoch: float | None) -> str:
    moment = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_status(view: JobView, *, tool_error_fails: bool) -> str:
    """A job's status as a task status.

    A failed generation is a tool result with `isError`, not a JSON-RPC error: the 2026 extension reports it as
    `completed` (the result carries the error), 2025-11-25 as `failed`.
    """
    if view.status in ("accepted", "queued", "running", "cancelling"):
        return "working"
    if view.status == "failed":
        return "failed" if tool_error_fails else "completed"
    return view.status


def _waiting_detail(view: JobView) -> str:
    """` (position 7; 2nd of your jobs; starts in about 40 s)`, as far as the dispatcher knows them."""
    parts = [f"position {view.queue_position}"] if view.queue_position else []
    if view.key_queue_position:
        parts.append(f"number {view.key_queue_position} of your waiting jobs")
    if view.estimated_start_at is not None:
        parts.append(f"starts in about {max(0, round(view.estimated_start_at - time.time()))} s")
    return f" ({'; '.join(parts)})" if parts else ""


def status_message(view: JobView) -> str:
    if view.status in ("accepted", "queued"):
        return "queued" + _waiting_detail(view)
    if view.status == "running":
        progress = view.progress
        step = f", step {progress.value}/{progress.max}" if progress.max else ""
        return f"running on {view.instance or 'an instance'}, {progress.percent:g}%{step}"
    if view.status == "failed":
        return f"generation failed: {view.error or 'no reason given'}"
    if view.status == "cancelling":
        return f"cancelling on {view.instance or 'an instance'} (stops when its current node ends)"
    if view.status == "cancelled":
        return view.error or "cancelled"
    removed = sum(o.removed_at is not None for o in view.outputs)
    if removed:
        return f"{len(view.outputs)} output(s), {removed} of them removed by retention"
    return f"{len(view.outputs)} output(s) ready"


def progress_message(event: JobProgress) -> str:
    """A progress notification's message: `42% (node 3 of 8, step 5/20)`."""
    where = [f"node {min(event.nodes_done + 1, event.nodes_total)} of {event.nodes_total}"] if event.nodes_total else []
    if event.max:
        where.append(f"step {event.value}/{event.max}")
    return f"{event.percent:g}%" + (f" ({', '.join(where)})" if where else "")


def poll_interval_ms(view: JobView) -> int:
    return 1000 if view.status == "running" else 2000


def _timestamps(view: JobView) -> tuple[str, str]:
    timings = view.timings
    created = timings.accepted_at
    updated = max((t for t in (timings.accepted_at, timings.started_at, timings.finished_at) if t), default=None)
    return _iso(created), _iso(updated)


def _task(view: JobView, *, modern: bool) -> dict[str, Any]:
    created, updated = _timestamps(view)
    return {
        "taskId": view.job_id,
        "status": task_status(view, tool_error_fails=not modern),
        "statusMessage": status_message(view),
        "createdAt": created,
        "lastUpdatedAt": updated,
        # The same two values, named differently by the two eras.
        "ttlMs" if modern else "ttl": TASK_TTL_MS,
        "pollIntervalMs" if modern else "pollInterval": poll_interval_ms(view),
    }


def modern_task(view: JobView) -> dict[str, Any]:
    """The 2026-07-28 `Task` of a job (no result inlined)."""
    return _task(view, modern=True)


def legacy_task(view: JobView) -> dict[str, Any]:
    """The 2025-11-25 `Task` of a job."""
    return _task(view, modern=False)


def legacy_capabilities() -> types.ServerTasksCapability:
    """2025-11-25: tools/call may be task-augmented, and tasks may be listed and cancelled."""
    return types.ServerTasksCapability(
        list=types.TasksListCapability(),
        cancel=types.TasksCancelCapability(),
        requests=types.ServerTasksRequestsCapability(
            tools=types.TasksToolsCapability(call=types.TasksCallCapability())
        ),
    )
