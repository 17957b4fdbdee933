"""The dashboard (instances, queue, recent images, service health) and the output images it shows."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from litestar import Controller, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.response import Stream, Template

from contracts import endpoints
from contracts.messages.instances import ListInstances
from contracts.messages.jobs import GetSchedulingView, QueueViewRequest, SchedulingView
from contracts.messages.keys import ApiKey, ApiKeyList, KeyLimits, ListApiKeys
from contracts.messages.stats import QueryFigures
from contracts.runtime.output_http import output_reply
from ui_service.first_run import detected_comfyui
from ui_service.hub_client import HubClient
from ui_service.pages import page, require_admin


@dataclass
class KeyRow:
    """One API key on the dashboard: its jobs now beside its limits."""

    name: str
    running: int
    waiting: int
    limits: KeyLimits


def key_rows(view: SchedulingView | None, listed: ApiKeyList | None) -> list[KeyRow]:
    """Every active key (idle ones too, so their limits show), then keys with jobs that the list lacks (revoked
    since, or the gateway not answering), then the jobs made without a key."""
    work = {k.api_key_id: k for k in view.keys} if view else {}
    known: dict[str, ApiKey] = {k.key_id: k for k in listed.keys} if listed else {}
    rows = []
    for key in known.values():
        if key.revoked_at is None or key.key_id in work:
            done = work.get(key.key_id)
            rows.append(KeyRow(key.name, done.running if done else 0, done.waiting if done else 0, key.limits))
    for key_id, done in work.items():
        if key_id not in known:
            name = key_id or "(no key: admin UI)"
            rows.append(KeyRow(name, done.running, done.waiting, KeyLimits()))
    return rows


class DashboardController(Controller):
    path = "/"
    guards = [require_admin]

    @get("/")
    async def dashboard(self, request: Request, hub: HubClient) -> Template:
        last_hour = QueryFigures(group_by="instance", since=time.time() - 3600)
        asked = await asyncio.gather(
            hub.try_ask(endpoints.Dispatch.INSTANCES_LIST, ListInstances()),
            hub.try_ask(endpoints.Dispatch.QUEUE_VIEW, QueueViewRequest(include_finished=True, limit=24)),
            hub.service_health(),
            hub.try_ask(endpoints.Stats.FIGURES, last_hour),
            hub.try_ask(endpoints.Dispatch.SCHEDULING_VIEW, GetSchedulingView()),
            hub.try_ask(endpoints.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True)),
        )
        (instances, instances_error), (queue, queue_error), health, (hour, _) = asked[:4]
        (scheduling, scheduling_error), (listed, keys_error) = asked[4:]
        views = instances.instances if instances else []
        jobs = queue.jobs if queue else []
        enabled = [v for v in views if v.instance.enabled]
        return page(
            "dashboard.html",
            request,
            instances=views,
            instances_error=instances_error,
            up=sum(1 for v in enabled if v.health.up),
            enabled_count=len(enabled),
            detected=await detected_comfyui(hub, views) if instances is not None else None,
            queue=queue,
            queue_error=queue_error,
            active=[j for j in jobs if j.status in ("queued", "running", "cancelling")],
            recent=[j for j in jobs if j.status == "completed"][:12],
            failed=[j for j in jobs if j.status == "failed"],
            hour=hour.total if hour else None,
            health=health,
            work={w.instance: w for w in scheduling.instances} if scheduling else {},
            scheduling=scheduling,
            scheduling_error=scheduling_error,
            key_rows=key_rows(scheduling, listed),
            keys_error=keys_error,
        )

    @get("/ui-images/{output_id:str}")
    async def image(self, request: Request, hub: HubClient, output_id: str) -> Response | Stream:
        """An output's bytes from the shared object store, for the signed-in admin only."""
        reply = await output_reply(
            hub.outputs(),
            output_id,
            if_none_match=request.headers.get("if-none-match"),
            range_header=request.headers.get("range"),
            cache_control="private, max-age=3600",
        )
        if reply.status == 404:
            raise HTTPException(status_code=404, detail="This image is no longer stored.")
        if reply.error is not None:
            raise HTTPException(status_code=503, detail=f"The image cannot be read now: {reply.error.info.message}")
        if isinstance(reply.body, bytes):
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)
        return Stream(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)
