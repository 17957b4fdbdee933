"""First run: a ComfyUI already running at its default address (HUB_UI_COMFYUI_PROBE_URL) but not yet an
instance is offered on the dashboard, with the render types it can run and, for the others, the models it lacks."""

from __future__ import annotations

import msgspec

from contracts import endpoints
from contracts.messages.instances import InstanceHealth, InstanceView, ProbeInstance
from contracts.messages.render_types import ListRenderTypes
from ui_service.capability import missing_on
from ui_service.hub_client import HubClient

DETECTED_NAME = "local-comfyui"  # the name the one-click add gives the detected server


class RenderTypeFit(msgspec.Struct, frozen=True):
    name: str
    missing: list[str]  # `folder/name` of the models the server lacks; [] when it can run the render type


class DetectedComfyUI(msgspec.Struct, frozen=True):
    base_url: str
    health: InstanceHealth
    fits: list[RenderTypeFit]

    @property
    def runnable(self) -> list[str]:
        return [fit.name for fit in self.fits if not fit.missing]


def same_server(a: str, b: str) -> bool:
    """Two base URLs of one server, as an admin would write them (`localhost` is `127.0.0.1`, a trailing `/`)."""

    def plain(url: str) -> str:
        return url.strip().rstrip("/").lower().replace("://localhost", "://127.0.0.1")

    return plain(a) == plain(b)


async def detected_comfyui(hub: HubClient, instances: list[InstanceView]) -> DetectedComfyUI | None:
    """The ComfyUI answering at the probe address when no instance names it yet; None otherwise."""
    url = hub.runtime.settings.ui_comfyui_probe_url
    if not url or any(same_server(view.instance.base_url, url) for view in instances):
        return None
    health, _ = await hub.try_ask(endpoints.Dispatch.INSTANCES_TEST, ProbeInstance(base_url=url))
    if health is None or not health.up:
        return None
    listed, _ = await hub.try_ask(endpoints.Registry.LIST, ListRenderTypes(include_disabled=False))
    summaries = listed.render_types if listed else []
    fits = [RenderTypeFit(name=rt.name, missing=missing_on(rt.requirements, health)) for rt in summaries]
    return DetectedComfyUI(base_url=url, health=health, fits=fits)
