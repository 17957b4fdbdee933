"""ComfyUI instances: list, add, edit, remove, and test a server before saving it."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.messages.instances import (
    DeleteInstance,
    GetInstance,
    Instance,
    InstanceHealth,
    ListInstances,
    ProbeInstance,
    SaveInstance,
)
from ui_service.first_run import DETECTED_NAME
from ui_service.forms import form_of, instance_from_form
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, act_then_redirect, ask_then_redirect, flash, named_or, page, require_admin


async def instances_page(
    request: Request,
    hub: HubClient,
    form: dict[str, str] | None = None,
    errors: dict | None = None,
    probe: InstanceHealth | None = None,
) -> Template:
    listed, error = await hub.try_ask(endpoints.Dispatch.INSTANCES_LIST, ListInstances())
    return page(
        "instances.html",
        request,
        instances=listed.instances if listed else [],
        load_error=error,
        form=form or {"slots": "1", "weight": "100", "enabled": "on"},
        errors=errors or {},
        probe=probe,
    )


class InstancesController(Controller):
    path = "/instances"
    guards = [require_admin]

    @get("/")
    async def instances(self, request: Request, hub: HubClient) -> Template:
        editing = request.query_params.get("edit")
        if not editing:
            return await instances_page(request, hub)
        view = await hub.ask(endpoints.Dispatch.INSTANCES_GET, GetInstance(name=editing))
        instance = view.instance
        form = {
            "original_name": instance.name,
            "name": instance.name,
            "base_url": instance.base_url,
            "slots": str(instance.slots),
            "weight": str(instance.weight),
            "tags": ", ".join(instance.tags),
            "enabled": "on" if instance.enabled else "",
        }
        return await instances_page(request, hub, form)

    @post("/")
    async def save_instance(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection() as rejected:
            view = await hub.ask(
                endpoints.Dispatch.INSTANCES_SAVE,
                SaveInstance(instance=instance_from_form(form), original_name=form.get("original_name") or None),
                timeout=15,
            )
        if rejected:
            return await instances_page(request, hub, form, rejected.errors)
        flash(request, f"Saved instance {view.instance.name}.")
        return Redirect("/instances")

    @post("/add-detected")
    async def add_detected(self, request: Request, hub: HubClient) -> Redirect:
        """The dashboard's one click: the ComfyUI found at the probe address becomes an instance."""
        url = hub.runtime.settings.ui_comfyui_probe_url
        with Rejection() as rejected:
            await hub.ask(
                endpoints.Dispatch.INSTANCES_SAVE,
                SaveInstance(instance=Instance(name=DETECTED_NAME, base_url=url)),
            )
        if rejected:
            return act_then_redirect(request, "/", rejected, "")
        flash(request, f"Added the ComfyUI at {url} as instance {DETECTED_NAME}. Try a generation.")
        return Redirect("/generate")

    @post("/delete")
    async def delete_instance(self, request: Request, hub: HubClient) -> Redirect:
        name = (await form_of(request)).get("name", "")
        deleting = DeleteInstance(name=name)
        done = f"Removed instance {name}."
        return await ask_then_redirect(
            request, hub, endpoints.Dispatch.INSTANCES_DELETE, deleting, target="/instances", done=done
        )

    @post("/test")
    async def test_instance(self, request: Request, hub: HubClient) -> Template:
        form = await form_of(request)
        with Rejection(named_or("base_url")) as rejected:
            health = await hub.ask(
                endpoints.Dispatch.INSTANCES_TEST,
                ProbeInstance(base_url=form.get("base_url", "").strip(), auth_header=form.get("auth_header") or None),
                timeout=20,
            )
        if rejected:
            return await instances_page(request, hub, form, rejected.errors)
        return await instances_page(request, hub, form, probe=health)
