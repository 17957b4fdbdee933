"""First run (issue 14, part 5): a ComfyUI already answering at the probe address (ComfyUI's default,
http://127.0.0.1:8188, set here to a chosen port) is offered on the dashboard with the render types it can run,
added with one click, and a generation from the admin UI then completes on it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape

import pytest
from dispatch_support import Hub, checkpoint_of, wait_for
from doubles.comfyui import ComfyUIDouble
from ui_support import signed_in_admin, ui_hub

from contracts import endpoints
from contracts.messages.instances import ListInstances
from contracts.messages.render_types import ListRenderTypes
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer, free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def probe_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, probe_port: int) -> AsyncIterator[Hub]:
    probe = f"http://127.0.0.1:{probe_port}"
    async with ui_hub(
        nats_server.url, tmp_path_factory.mktemp("ui-first-run"), HUB_UI_COMFYUI_PROBE_URL=probe
    ) as running:
        yield running


def fits_of(dashboard: str) -> dict[str, str]:
    """The detected server's render types as the dashboard lists them: name -> what it says."""
    rows = re.findall(r'<tr class="fit"><td>(.*?)</td><td>(.*?)</td></tr>', dashboard, re.S)
    return {unescape(name): unescape(re.sub(r"<[^>]+>", "", said)).strip() for name, said in rows}


async def test_a_comfyui_at_the_default_address_is_offered_added_and_generates(hub: Hub, probe_port: int) -> None:
    checkpoint = await checkpoint_of(hub.nc)
    shipped = {rt.name: rt for rt in (await call(hub.nc, endpoints.Registry.LIST, ListRenderTypes())).render_types}
    async with signed_in_admin(hub.ui_url) as admin:  # type: ignore[attr-defined]
        assert 'id="detected-comfyui"' not in await admin.get("/")  # nothing listens there yet

        comfy = ComfyUIDouble(models={"checkpoints": [checkpoint]})
        await comfy.start(port=probe_port)
        try:
            dashboard = await admin.get("/")
            assert f"ComfyUI found at http://127.0.0.1:{probe_port}" in dashboard
            fits = fits_of(dashboard)
            assert set(fits) == {name for name, rt in shipped.items() if rt.enabled}
            assert fits["sdxl"] == "can run"
            assert any(said.startswith("cannot run missing") for said in fits.values())  # e.g. upscale's model
            for name, said in fits.items():  # every other one names the models the server lacks
                needed = [f"{m.folder}/{m.name}" for m in shipped[name].requirements.models]
                lacking = [model for model in needed if model != f"checkpoints/{checkpoint}"]
                assert said == ("can run" if not lacking else f"cannot run missing {', '.join(lacking)}"), name

            added = await admin.post("/instances/add-detected", {}, from_page="/")
            assert added.headers["location"] == "/generate"
            listed = await call(hub.nc, endpoints.Dispatch.INSTANCES_LIST, ListInstances())
            assert [(v.instance.name, v.instance.base_url) for v in listed.instances] == [
                ("local-comfyui", f"http://127.0.0.1:{probe_port}")
            ]
            assert 'id="detected-comfyui"' not in await admin.get("/")  # it is an instance now

            form = {"prompt": "a lighthouse at dusk", "render_type": "sdxl", "count": "1", "style_mode": "default"}
            submitted = await admin.post(
                "/generate", form, from_page="/generate", files={"input_image_file": ("", b"")}
            )
            job_id = submitted.headers["location"].removeprefix("/jobs/")
            assert (await wait_for(hub.nc, job_id, {"completed", "failed"})).status == "completed"
        finally:
            await comfy.stop()
