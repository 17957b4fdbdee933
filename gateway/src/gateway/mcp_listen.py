"""`subscriptions/listen` (2026-07-28): one request whose response stream carries the notifications a client
opted in to, fed from NATS so that every gateway replica serves any client.

- `resourceSubscriptions` for `hub://render-types` and `hub://styles`: `notifications/resources/updated` when the
  registry or the prompt service announces a change (`Registry.CHANGED`, `Prompt.STYLES_CHANGED`).
- `taskIds` (tasks extension): `notifications/tasks` with the whole task, as `tasks/get` would answer, each time
  the job's status changes, starting with its state when the stream opens.

The list-changed kinds are not honoured: this server's tools, prompts and resource list never change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

from contracts import topics
from contracts.messages.events import JobCancelled, JobCompleted, JobFailed, JobStarted
from gateway.mcp_tasks import MISSING_REQUIRED_CLIENT_CAPABILITY, declares_tasks_extension, missing_capability_data

RENDER_TYPES_URI = "hub://render-types"
STYLES_URI = "hub://styles"
WATCHED_RESOURCES = {
    RENDER_TYPES_URI: topics.Registry.CHANGED.subject,
    STYLES_URI: topics.Prompt.STYLES_CHANGED.subject,
}
MAX_TASKS_PER_STREAM = 100
STATUS_EVENTS = (JobStarted, JobCompleted, JobFailed, JobCancelled)

# (task id) -> the task as tasks/get would answer it, or None when the caller may not see it
TaskState = Callable[[ServerRequestContext[Any], str], Awaitable[dict[str, Any] | None]]
# (task id) -> the job's generation events, replayed from its first
JobEvents = Callable[[str], Any]


class _Frame(BaseModel):
    """A notification for `ServerSession.send_notification`, which sends any model's `method` and `params`:
    the SDK's typed notifications have no `notifications/tasks` (it belongs to the tasks extension)."""

    method: str
    params: dict[str, Any]


def _requested_task_ids(ctx: ServerRequestContext[Any], requested: Any) -> list[str]:
    """The task ids a listen asks to follow, refused when the client lacks the tasks extension or asks too many."""
    task_ids = list((requested.model_extra or {}).get("taskIds") or [])
    if task_ids and not declares_tasks_extension(ctx.params):
        raise MCPError(
            MISSING_REQUIRED_CLIENT_CAPABILITY,
            "Missing required client capability: taskIds need the io.modelcontextprotocol/tasks extension",
            missing_capability_data(),
        )
    if len(task_ids) > MAX_TASKS_PER_STREAM:
        raise MCPError(-32602, f"at most {MAX_TASKS_PER_STREAM} taskIds per stream; open another stream")
    return task_ids


class ListenHandler:
    def __init__(self, nc: NatsClient, task_state: TaskState, job_events: JobEvents) -> None:
        self._nc = nc
        self._task_state = task_state
        self._job_events = job_events

    async def __call__(
        self, ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> dict[str, Any]:
        if ctx.request_id is None:
            raise MCPError(-32600, "subscriptions/listen needs a request id")
        requested = params.notifications
        task_ids = _requested_task_ids(ctx, requested)
        uris = [uri for uri in requested.resource_subscriptions or [] if uri in WATCHED_RESOURCES]
        first_states = {task_id: await self._task_state(ctx, task_id) for task_id in dict.fromkeys(task_ids)}
        tasks = {task_id: state for task_id, state in first_states.items() if state is not None}

        meta = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        honored: dict[str, Any] = {}
        if uris:
            honored["resourceSubscriptions"] = uris
        if tasks:
            honored["taskIds"] = list(tasks)
        send, receive = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](256)

        async def notify(method: str, params: dict[str, Any]) -> None:
            frame = _Frame(method=method, params={**params, "_meta": meta})
            # The SDK types the argument as its notification union, which lacks these methods (see _Frame).
            await ctx.session.send_notification(frame, related_request_id=ctx.request_id)  # type: ignore[arg-type]

        async def write() -> None:
            # One writer, so the acknowledgement is the first frame and frames never interleave.
            await notify("notifications/subscriptions/acknowledged", {"notifications": honored})
            async with receive:
                async for method, params in receive:
                    await notify(method, params)

        async with anyio.create_task_group() as group, send:
            group.start_soon(write)
            if uris:
                group.start_soon(self._watch_resources, uris, send.clone())
            for task_id, state in tasks.items():
                group.start_soon(self._watch_task, ctx, task_id, state, send.clone())
        return {"_meta": meta}

    async def _watch_resources(self, uris: list[str], send: anyio.abc.ObjectSendStream[Any]) -> None:
        by_subject = {WATCHED_RESOURCES[uri]: uri for uri in uris}
        subscriptions = [await self._nc.subscribe(subject) for subject in by_subject]
        try:
            async with send, anyio.create_task_group() as group:
                for subscription in subscriptions:
                    group.start_soon(self._relay_changes, subscription, by_subject[subscription.subject], send)
        finally:
            with anyio.CancelScope(shield=True):  # also when the client went away and the handler is cancelled
                for subscription in subscriptions:
                    await subscription.unsubscribe()

    @staticmethod
    async def _relay_changes(subscription: Any, uri: str, send: anyio.abc.ObjectSendStream[Any]) -> None:
        async for _ in subscription.messages:
            await send.send(("notifications/resources/updated", {"uri": uri}))

    async def _watch_task(
        self, ctx: ServerRequestContext[Any], task_id: str, state: dict[str, Any], send: anyio.abc.ObjectSendStream[Any]
    ) -> None:
        async with send:
            await send.send(("notifications/tasks", state))
            last = (state["status"], state.get("statusMessage"))
            if state["status"] != "working":
                return
            async for event in self._job_events(task_id):
                if not isinstance(event, STATUS_EVENTS):
                    continue
                current = await self._task_state(ctx, task_id)
                if current is None:
                    return
                if (current["status"], current.get("statusMessage")) != last:
                    last = (current["status"], current.get("statusMessage"))
                    await send.send(("notifications/tasks", current))
                if current["status"] != "working":
                    return
