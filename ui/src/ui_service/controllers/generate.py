"""Test generation: the form, submitting a job, following it live (server-sent events), cancelling it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.response import Redirect, ServerSentEvent, Template
from litestar.response.sse import ServerSentEventMessage

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import FINAL_STATUSES, CancelJob, GenerationRequest, GetJob
from contracts.messages.keys import GetWebhookDelivery
from contracts.messages.render_types import ListRenderTypes, RenderTypeList, RenderTypeSummary
from contracts.messages.styles import ListStyles
from contracts.runtime.bus import job_events
from contracts.runtime.storage import input_image_staged
from contracts.streams import is_job_id
from ui_service.forms import (
    MAX_INPUT_IMAGE_BYTES,
    generation_field,
    human_size,
    image_count,
    number_of,
    read_input_image,
    seed_of,
)
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, flash, page, require_admin
from ui_service.picker import picker_styles

FINAL_EVENTS = {"completed", "failed", "cancelled"}


async def generate_page(
    request: Request, hub: HubClient, form: dict[str, str] | None = None, errors: dict | None = None
) -> Template:
    (render_types, _), (styles, _) = await asyncio.gather(
        hub.try_ask(endpoints.Registry.LIST, ListRenderTypes(include_disabled=False)),
        hub.try_ask(endpoints.Prompt.STYLES_LIST, ListStyles(include_disabled=False)),
    )
    listed = render_types.render_types if render_types else []
    return page(
        "generate.html",
        request,
        render_types=listed,
        default_render_type=next((rt for rt in listed if rt.is_default), None),
        picker=picker_styles(styles.styles if styles else []),
        default_styles=[s.name for s in (styles.styles if styles else []) if s.is_default],
        form=form or {"count": "1", "style_mode": "default"},
        errors=errors or {},
        upload_limit=MAX_INPUT_IMAGE_BYTES,
        upload_limit_text=human_size(MAX_INPUT_IMAGE_BYTES),
    )


def chosen_render_type(listed: RenderTypeList, form: dict[str, str]) -> RenderTypeSummary | None:
    """The render type the form names, or the default one when it names none."""
    wanted = form.get("render_type")
    return next((rt for rt in listed.render_types if rt.name == wanted or (not wanted and rt.is_default)), None)


async def generation_of(hub: HubClient, data: Any, form: dict[str, str], styles: list[str]) -> GenerationRequest:
    listed = await hub.ask(endpoints.Registry.LIST, ListRenderTypes(include_disabled=False))
    chosen = chosen_render_type(listed, form)
    input_image = await read_input_image(data.get("input_image_file"), form.get("input_image_url", "").strip(), chosen)
    return GenerationRequest(
        prompt=form.get("prompt", ""),
        negative_prompt=form.get("negative_prompt", ""),
        render_type=form.get("render_type") or None,
        styles=None if form.get("style_mode") == "default" else styles,
        enhance_prompt=form.get("enhance_prompt") == "on",
        seed=seed_of(form, chosen),
        width=number_of(form, "width"),
        height=number_of(form, "height"),
        steps=number_of(form, "steps"),
        cfg=number_of(form, "cfg", float),
        count=image_count(form, chosen),
        input_image=input_image,
        client_name="admin-ui",
    )


async def event_messages(hub: HubClient, job_id: str) -> AsyncIterator[ServerSentEventMessage]:
    """The job's generation events, replayed from JetStream from the first one, until the final one."""
    async for event in job_events(hub.nc, job_id, idle_s=15):
        if event is None:
            yield ServerSentEventMessage(comment="keep-alive")
            continue
        kind = type(event).__struct_config__.tag
        data = msgspec.json.encode(event).decode()
        yield ServerSentEventMessage(data=data, event=str(kind), id=event.event_id)
        if kind in FINAL_EVENTS:
            return


class GenerateController(Controller):
    path = "/"
    guards = [require_admin]

    @get("/generate")
    async def generate(self, request: Request, hub: HubClient) -> Template:
        return await generate_page(request, hub)

    @post("/generate")
    async def submit_generation(self, request: Request, hub: HubClient) -> Template | Redirect:
        data = await request.form()
        form = {k: str(v) for k, v in data.items() if k not in ("styles", "input_image_file")}
        chosen_styles = [str(v) for v in data.getall("styles")] if "styles" in data else []
        form["styles"] = ",".join(chosen_styles)
        with Rejection(generation_field) as rejected:
            generation = await generation_of(hub, data, form, chosen_styles)
            # An uploaded image goes through the object store, not inside the NATS request (max_payload).
            async with input_image_staged(hub.outputs(), generation) as staged:
                reply = await hub.ask(endpoints.Dispatch.JOBS_SUBMIT, staged, timeout=60)
        if rejected:
            return await generate_page(request, hub, form, rejected.errors)
        return Redirect(f"/jobs/{reply.job_id}")

    @get("/jobs/{job_id:str}")
    async def job_page(self, request: Request, hub: HubClient, job_id: str) -> Template:
        view = await hub.ask(endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
        # The gateway delivers webhooks; while it is down the page shows the job and says the rest is unknown.
        webhook, webhook_error = await hub.try_ask(endpoints.Gateway.WEBHOOK_GET, GetWebhookDelivery(job_id=job_id))
        return page(
            "job.html",
            request,
            job=view,
            final=view.status in FINAL_STATUSES,
            now=time.time(),
            webhooks=webhook.deliveries if webhook else [],
            webhook_error=webhook_error if view.api_key_id else "",  # only API jobs can have a webhook
        )

    @post("/jobs/{job_id:str}/cancel")
    async def cancel_job(self, request: Request, hub: HubClient, job_id: str) -> Redirect:
        with Rejection() as rejected:
            await hub.ask(endpoints.Dispatch.JOBS_CANCEL, CancelJob(job_id=job_id, reason="cancelled by the admin"))
        if rejected:
            flash(request, rejected.message, "error")
        return Redirect(f"/jobs/{job_id}")

    @get("/jobs/{job_id:str}/events")
    async def job_event_stream(self, hub: HubClient, job_id: str) -> ServerSentEvent:
        """The job's generation events as server-sent events (404 for what cannot be a job id, before streaming)."""
        if not is_job_id(job_id):
            raise HubError(ErrorCode.NOT_FOUND, f"no job {job_id[:80]!r}: a job id is letters, digits, `_` and `-`")
        return ServerSentEvent(event_messages(hub, job_id))
