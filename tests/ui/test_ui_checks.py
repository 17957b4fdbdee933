"""The admin UI says what is wrong with a form and keeps what was typed (issue 14, part 3), through the real
services over HTTP: a form posted as a browser posts it, the page that comes back read as the admin reads it."""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape

import pytest
from dispatch_support import Hub
from ui_support import Admin, field_error, value_of

from contracts import endpoints
from contracts.messages.render_types import GetRenderType
from contracts.runtime.bus import call

pytestmark = pytest.mark.timeout(180)


async def analysed(admin: Admin, hub: Hub) -> dict[str, str]:
    """The render type form as step 2 fills it for the shipped sdxl workflow."""
    sdxl = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    page = await admin.post(
        "/render-types/analyze", {"workflow": json.dumps(sdxl.workflow)}, from_page="/render-types/new"
    )
    assert 'id="save-form"' in page.text
    parameter_map = unescape(
        re.search(r'<textarea id="f-parameter_map"[^>]*>(.*?)</textarea>', page.text, re.S).group(1)
    )
    return {"workflow": json.dumps(sdxl.workflow), "parameter_map": parameter_map, "output_kind": "image"}


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("portrait xl", "lowercase letters, digits"),
        ("", "lowercase letters, digits"),
        ("porträt", "lowercase letters, digits"),
        ("sdxl", "sdxl"),  # a duplicate of the shipped render type
    ],
)
async def test_a_bad_render_type_name_is_named_and_the_analysis_kept(
    hub: Hub, admin: Admin, name: str, words: str
) -> None:
    form = {**await analysed(admin, hub), "name": name, "description": "kept", "width": "832", "steps": "31"}
    page = await admin.post("/render-types/save", form, from_page="/render-types/new")
    assert page.status_code == 200
    assert 'id="save-form"' in page.text, "back at step 1: the analysis was lost"
    assert words in field_error(page.text, "name"), page.text
    assert "starting with a letter or digit" in page.text  # the rule, stated beside the box before any error
    assert value_of(page.text, "name") == name
    assert (value_of(page.text, "description"), value_of(page.text, "width"), value_of(page.text, "steps")) == (
        "kept",
        "832",
        "31",
    )


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("count", "17", "1 to 16"),  # sdxl's max_batch_size (and the request's limit) is 16
        ("count", "0", "1 to 16"),
        ("seed", "-5", "0 or more"),
    ],
)
async def test_a_generation_number_out_of_range_is_named_beside_its_box(
    admin: Admin, field: str, value: str, words: str
) -> None:
    form = {"prompt": "a cat", "render_type": "sdxl", "count": "1", "style_mode": "default", field: value}
    page = await admin.post("/generate", form, from_page="/generate", files={"input_image_file": ("", b"")})
    assert page.status_code == 200, (page.status_code, page.headers.get("location"))
    assert words in field_error(page.text, field), page.text
    assert value_of(page.text, field) == value


async def test_the_llm_form_shows_the_saved_model_and_the_services_page_the_real_state(admin: Admin) -> None:
    from doubles.ollama import OllamaDouble

    async with OllamaDouble(models=["llama3.2:3b", "qwen2.5:7b"]) as ollama:
        form = {"provider": "ollama", "base_url": ollama.url, "model": "", "timeout_s": "20", "temperature": "0.7"}
        saved = await admin.post("/prompt/llm", form, from_page="/prompt")
        assert saved.status_code in (302, 303), saved.text[:500]
        page = await admin.get("/prompt")
        selector = re.search(r'<select id="f-model".*?</select>', page, re.S).group(0)
        assert re.findall(r"<option[^>]*selected[^>]*>([^<]*)", selector) == ["(none saved: pick one)"]
        assert "Saved: none" in page

        await admin.post("/prompt/llm", {**form, "model": "mistral:7b"}, from_page="/prompt")
        status = await admin.get("/status")
        assert "llm: not working:" in unescape(status) and "no model 'mistral:7b'" in unescape(status)

        await admin.post("/prompt/llm", {**form, "model": "qwen2.5:7b"}, from_page="/prompt")
        assert "llm: ok" in await admin.get("/status")
        await ollama.go_down()
        status = unescape(await admin.get("/status"))
        assert "llm: not working:" in status and "cannot be reached" in status
        await admin.post("/prompt/llm", form, from_page="/prompt")


async def test_a_render_type_no_instance_can_run_is_marked_and_warned_of(hub: Hub, admin: Admin) -> None:
    from dispatch_support import add_instance, checkpoint_of, remove_instance
    from doubles.comfyui import ComfyUIDouble

    checkpoint = await checkpoint_of(hub.nc)
    badge = f"needs checkpoints/{checkpoint}"
    listed = unescape(await admin.get("/render-types"))
    assert badge in listed  # no instance at all: nothing can run sdxl

    form = {**await analysed(admin, hub), "name": "portrait-check"}
    saved = await admin.post("/render-types/save", form, from_page="/render-types/new")
    assert saved.status_code in (302, 303)
    shown = unescape(await admin.get(saved.headers["location"]))
    warning = "Saved render type portrait-check (version 1). No ComfyUI instance has checkpoints/"
    assert f'flash warn" role="status">{warning}{checkpoint}' in shown

    async with ComfyUIDouble(models={"checkpoints": [checkpoint]}) as comfy:
        await add_instance(hub.nc, comfy, "has-the-checkpoint")
        try:
            for _ in range(50):  # the instance's models are known once the health loop has reached it
                listed = unescape(await admin.get("/render-types"))
                if badge not in listed:
                    break
                await asyncio.sleep(0.2)
            assert badge not in listed
        finally:
            await remove_instance(hub.nc, "has-the-checkpoint")


async def test_a_style_for_a_render_type_that_does_not_exist_is_refused_beside_the_box(admin: Admin) -> None:
    form = {"name": "turbo look", "positive": "{prompt}, turbo", "render_types": "sdxl, sdxl-turbo", "enabled": "on"}
    page = await admin.post("/styles", form, from_page="/styles")
    assert page.status_code == 200
    assert "no render type named 'sdxl-turbo'" in field_error(page.text, "render_types"), page.text
    assert value_of(page.text, "render_types") == "sdxl, sdxl-turbo"
    assert "turbo look" not in await admin.get("/styles?q=turbo")


async def test_the_dashboard_says_when_the_gateway_does_not_answer(admin: Admin) -> None:
    """No gateway runs in this module: the keys' card says so instead of "no API key yet"."""
    page = await admin.get("/")
    keys_card = page.split('id="keys-work"', 1)[1].split("</div>", 1)[0]
    assert "The gateway did not answer" in keys_card and "No API key yet" not in keys_card, keys_card
