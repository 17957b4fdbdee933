"""The admin UI in a real headless chromium, against the real services on a real NATS server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dispatch_support import Hub, checkpoint_of
from doubles.comfyui import ComfyUIDouble
from playwright.async_api import Browser, BrowserContext, Page
from ui_support import ADMIN_PASSWORD, screenshot, sign_in

from contracts import endpoints
from contracts.messages.keys import KeyLimits, ListApiKeys
from contracts.runtime.bus import call

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    fresh = await browser.new_context(viewport={"width": 1280, "height": 860})
    yield fresh
    await fresh.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return tmp_path


def url(hub: Hub, path: str = "/") -> str:
    return f"{hub.ui_url}{path}"  # type: ignore[attr-defined]


async def signed_in_page(hub: Hub, context: BrowserContext, path: str | None = None) -> Page:
    """A new tab signed in as the admin, at `path` of the UI when one is given."""
    page = await context.new_page()
    await sign_in(page, hub.ui_url)  # type: ignore[attr-defined]
    if path is not None:
        await page.goto(url(hub, path))
    return page


async def navigate_by_click(page: Page, selector: str) -> None:
    """Click something that loads another page, and wait until that page has loaded (a click alone does not wait,
    so the next assertion could read the page before)."""
    async with page.expect_navigation():
        await page.click(selector)


async def test_pages_need_a_signed_in_admin(hub: Hub, context: BrowserContext, shots: Path) -> None:
    page = await context.new_page()
    await page.goto(url(hub, "/instances"))
    assert page.url.startswith(url(hub, "/login")), page.url
    await screenshot(page, shots, "login")

    await sign_in(page, hub.ui_url, password="not the password")  # type: ignore[attr-defined]
    assert "Wrong user name or password" in await page.inner_text("main")
    assert "/login" in page.url

    await sign_in(page, hub.ui_url)  # type: ignore[attr-defined]
    assert page.url == url(hub, "/")
    assert await page.inner_text("h1") == "Dashboard"
    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies["session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    await screenshot(page, shots, "dashboard")

    await page.click("text=Sign out")
    await page.goto(url(hub, "/styles"))
    assert page.url.startswith(url(hub, "/login"))


async def test_a_form_post_without_its_csrf_token_is_refused(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context)
    # Same cookies as the signed-in page (session and CSRF cookie), but no token in the form.
    response = await context.request.post(url(hub, "/styles"), form={"name": "sneaky", "positive": "{prompt}"})
    assert response.status == 403
    body = await response.text()
    assert "security token" in body and "Traceback" not in body
    await page.goto(url(hub, "/styles"))
    assert "sneaky" not in await page.inner_text("table")


async def test_a_style_name_with_markup_is_shown_as_text(hub: Hub, context: BrowserContext, shots: Path) -> None:
    page = await signed_in_page(hub, context, "/styles?new=1")  # the editor opens at the top
    hostile = "<script>window.pwned=1</script> noir"
    await page.fill("#f-name", hostile)
    await page.fill("#f-category", "test")
    await page.fill("#f-positive", "{prompt}, film noir, deep shadows")
    await page.click("#style-form button[type=submit]")
    assert "Saved style" in await page.inner_text(".flash")
    names = await page.locator(".style-name").all_inner_texts()
    assert hostile in names
    assert await page.evaluate("window.pwned") is None
    await page.fill("input[name=q]", "noir")
    await page.click("text=Filter")
    assert await page.locator(".style-name").all_inner_texts() == [hostile]
    await screenshot(page, shots, "styles")


async def test_a_style_error_is_shown_beside_its_field(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context, "/styles?new=1")  # the editor opens at the top
    await page.fill("#f-name", "no placeholder")
    await page.fill("#f-positive", "x" * 5000)  # beyond the positive text's limit
    await page.click("#style-form button[type=submit]")
    error = page.locator(".field-error")
    assert await error.count() >= 1
    assert (await error.first.inner_text()).strip()
    assert await page.input_value("#f-name") == "no placeholder"  # the admin's input is kept


async def test_an_instance_is_tested_added_and_shown(hub: Hub, context: BrowserContext, shots: Path) -> None:
    checkpoint = await checkpoint_of(hub.nc)
    async with ComfyUIDouble(models={"checkpoints": [checkpoint]}) as comfy:
        page = await signed_in_page(hub, context, "/instances")
        await page.fill("#f-name", "gpu-test")
        await page.fill("#f-base_url", comfy.url)
        await page.fill("#f-slots", "2")
        await page.click("text=Test connection")
        await page.wait_for_load_state()
        assert await page.locator("#probe").count() == 1, await page.inner_text("main")
        probe = await page.inner_text("#probe")
        assert "reachable" in probe and checkpoint in probe, probe
        assert await page.input_value("#f-name") == "gpu-test"

        await page.click("#instance-form button:has-text('Save instance')")
        assert "Saved instance gpu-test" in await page.inner_text(".flash")
        row = page.locator("tr", has_text="gpu-test")
        assert "/ 2" in await row.inner_text()
        assert "sdxl" in await row.inner_text()  # the render types it can run
        await page.wait_for_timeout(600)  # one health round
        await page.reload()
        assert "up" in await page.locator("tr", has_text="gpu-test").inner_text()
        await screenshot(page, shots, "instances")

        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(url(hub, "/"))
        assert "gpu-test" in await page.inner_text("main")
        await screenshot(page, shots, "dashboard-phone")
        await page.set_viewport_size({"width": 1280, "height": 860})

        page.on("dialog", lambda dialog: dialog.accept())
        await page.goto(url(hub, "/instances"))
        await page.locator("tr", has_text="gpu-test").locator("button:has-text('Remove')").click()
        assert "Removed instance gpu-test" in await page.inner_text(".flash")


async def test_a_bad_instance_url_is_named_beside_its_field(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context, "/instances")
    await page.fill("#f-name", "broken")
    await page.fill("#f-base_url", "not a url")
    await page.click("#instance-form button:has-text('Save instance')")
    errors = await page.locator(".field-error, .flash.error").all_inner_texts()
    assert errors and any(text.strip() for text in errors), await page.content()
    assert await page.input_value("#f-base_url") == "not a url"


async def test_errors_show_a_friendly_page_without_a_stack_trace(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context)
    for path in ("/ui-images/no-such-image", "/no/such/page"):
        response = await page.goto(url(hub, path))
        assert response is not None and response.status == 404
        text = await page.inner_text("body")
        assert "Back to the dashboard" in text
        assert "Traceback" not in text and 'File "' not in text
    assert ADMIN_PASSWORD not in await page.content()


RECORD_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("job-progress");
  if (!bar) return;
  new MutationObserver(() => {
    const seen = JSON.parse(sessionStorage.getItem("widths") || "[]");
    seen.push(bar.style.width);
    sessionStorage.setItem("widths", JSON.stringify(seen));
  }).observe(bar, {attributes: true});
});
"""


async def test_a_test_generation_shows_live_progress_and_its_image(
    hub: Hub, context: BrowserContext, shots: Path
) -> None:
    checkpoint = await checkpoint_of(hub.nc)
    async with ComfyUIDouble(models={"checkpoints": [checkpoint]}, work_seconds=2.0) as comfy:
        from dispatch_support import add_instance, remove_instance

        await add_instance(hub.nc, comfy, "gpu-gen")
        try:
            await context.add_init_script(RECORD_PROGRESS)
            page = await signed_in_page(hub, context, "/generate")
            await page.fill("#f-prompt", "a lighthouse at dusk")
            await page.fill("#f-seed", "1234")
            await page.select_option("#f-render_type", "sdxl")
            await screenshot(page, shots, "generate")
            await navigate_by_click(page, "#generate-form button[type=submit]")
            assert "/jobs/" in page.url
            await page.wait_for_selector("#outputs img", timeout=60_000)
            assert await page.inner_text("#job-status") == "completed"
            source = await page.get_attribute("#outputs img", "src")
            image = await context.request.get(url(hub, source or ""))
            assert image.status == 200, await image.text()
            assert image.headers["content-type"] == "image/png"
            await page.wait_for_function("document.querySelector('#outputs img').naturalWidth > 0")
            widths = await page.evaluate("JSON.parse(sessionStorage.getItem('widths') || '[]')")
            partial = [w for w in widths if w not in ("0%", "100%", "")]
            assert partial, f"the bar never showed a partial step: {widths}"
            assert "lighthouse" in await page.inner_text("#final-positive")
            assert "seed 1234" in await page.inner_text("main")
            await screenshot(page, shots, "job")

            await page.goto(url(hub, "/"))
            assert await page.locator(".thumbs img").count() >= 1
            await screenshot(page, shots, "dashboard-with-images")
        finally:
            await remove_instance(hub.nc, "gpu-gen")


async def test_the_job_page_says_when_retention_removed_its_images(hub: Hub, context: BrowserContext) -> None:
    from dispatch_support import add_instance, remove_instance, retention_removes_images_of, submit, wait_final

    async with ComfyUIDouble(models={"checkpoints": [await checkpoint_of(hub.nc)]}, work_seconds=0.1) as comfy:
        await add_instance(hub.nc, comfy, "gpu-retention")
        try:
            job_id = (await submit(hub.nc, "a harbour long ago")).job_id
            assert (await wait_final(hub.nc, job_id)).status == "completed"
            report = await retention_removes_images_of(hub, job_id)
            assert report.images_removed == 1 and report.error is None, report
        finally:
            await remove_instance(hub.nc, "gpu-retention")
    page = await signed_in_page(hub, context, f"/jobs/{job_id}")
    removed = await page.inner_text("#outputs .removed-output")
    assert "removed by retention on 20" in removed and "UTC" in removed, removed
    assert await page.locator("#outputs img").count() == 0  # no broken image of a file that is gone
    await page.goto(url(hub, "/"))
    assert await page.locator(f'.thumbs a[href="/jobs/{job_id}"]').count() == 0


async def test_render_type_settings_show_only_what_the_workflow_has(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context, "/render-types")

    async def row(name: str) -> str:
        return await page.inner_text(f'#render-types tr:has(a[href="/render-types/{name}"]) td.settings')

    assert await row("sdxl") == "1024\u00d71024 · 30 steps · cfg 7 · batch 1"
    assert await row("flux") == "1024\u00d71024 · 20 steps · batch 1"  # no cfg: FluxGuidance is in the workflow
    assert await row("upscale") == "no settings (the workflow fixes them)"
    await page.goto(url(hub, "/render-types/upscale"))
    assert await page.inner_text("#settings-line") == "no settings (the workflow fixes them)"
    await page.goto(url(hub, "/render-types/img2img"))
    assert await page.inner_text("#settings-line") == "30 steps · cfg 7 · denoise 0.6 · batch 1"


async def test_a_generation_error_is_shown_beside_its_field(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context, "/generate")
    await page.fill("#f-prompt", "a cat")
    await page.fill("#f-width", "12")  # below the minimum
    await navigate_by_click(page, "#generate-form button[type=submit]")
    assert "/generate" in page.url
    error = page.locator(".has-error .field-error")
    assert await error.count() == 1, await page.inner_text("main")
    assert await page.input_value("#f-width") == "12"


async def test_statistics_show_the_generation_and_its_image(hub: Hub, context: BrowserContext, shots: Path) -> None:
    # Runs after the test generation above (same module hub): the log holds at least that job.
    page = await signed_in_page(hub, context, "/stats")
    row = page.locator("#log tr", has_text="a lighthouse at dusk")
    await row.first.wait_for(timeout=10_000)
    assert "completed" in await row.first.inner_text()
    assert await row.first.locator("img").count() == 1
    assert await page.locator("svg.chart").count() >= 1
    await page.fill("#q-text", "no such prompt anywhere")
    await page.click("#log-filter button")
    assert "No generation matches" in await page.inner_text("#log")
    await page.goto(url(hub, "/stats"))
    await screenshot(page, shots, "stats")


async def test_maintenance_saves_the_policy_and_exports_the_log(hub: Hub, context: BrowserContext, shots: Path) -> None:
    page = await signed_in_page(hub, context, "/maintenance")
    await page.fill("#f-keep_images_days", "45")
    await page.click("#retention-form button")
    assert "Saved the retention policy" in await page.inner_text(".flash")
    assert await page.input_value("#f-keep_images_days") == "45"
    await page.check("input[name=dry_run]")
    await page.click("text=Run the clean-up")
    assert "Would remove" in await page.inner_text("#clean-report")
    await screenshot(page, shots, "maintenance")
    export = await context.request.get(url(hub, "/maintenance/export?format=csv"))
    assert export.status == 200 and "attachment" in export.headers["content-disposition"]
    assert "a lighthouse at dusk" in await export.text()


async def test_a_render_type_is_made_from_a_workflow_file(
    hub: Hub, context: BrowserContext, shots: Path, tmp_path: Path
) -> None:
    import json

    from contracts.messages.render_types import GetRenderType
    from contracts.runtime.bus import call

    sdxl = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    workflow_file = tmp_path / "portrait.json"
    workflow_file.write_text(json.dumps(sdxl.workflow))

    page = await signed_in_page(hub, context, "/render-types")
    assert "sdxl" in await page.inner_text("#render-types")
    await page.click("text=New render type from a workflow")
    await page.set_input_files("#f-workflow_file", str(workflow_file))
    await page.click("#analyze-form button")
    proposed = await page.input_value("#f-parameter_map")
    assert "prompt:" in proposed and "seed:" in proposed, proposed
    await screenshot(page, shots, "render-type-analysis")

    await page.fill("#f-name", "portrait-ui")
    await page.fill("#f-width", "832")
    await page.fill("#f-height", "1216")
    await page.click("#save-form button[type=submit]")
    assert "Saved render type portrait-ui (version 1)" in await page.inner_text(".flash")
    saved = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="portrait-ui"))
    assert (saved.defaults.width, saved.defaults.height) == (832, 1216)

    await page.fill("#f-prompt", "a portrait in <b>oil</b>")
    await page.fill("#f-seed", "77")
    await page.click("#dry-run-form button")
    resolved = await page.inner_text("#resolved")
    assert "a portrait in <b>oil</b>" in resolved and "77" in resolved
    await screenshot(page, shots, "render-type")

    await page.goto(url(hub, "/render-types"))
    await page.locator("tr", has_text="portrait-ui").locator("button:has-text('Make default')").click()
    assert "portrait-ui is now the default" in await page.inner_text(".flash")
    await page.locator("tr", has_text="sdxl").first.locator("button:has-text('Make default')").click()
    assert "sdxl is now the default" in await page.inner_text(".flash")


async def test_a_broken_workflow_is_named_beside_its_field(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context, "/render-types/new")
    await page.fill("#f-workflow", "{not json")
    await page.click("#analyze-form button")
    assert (await page.inner_text("#error-workflow")).strip()


async def test_the_prompt_preview_and_the_llm_test_box(hub: Hub, context: BrowserContext, shots: Path) -> None:
    from doubles.ollama import OllamaDouble

    async with OllamaDouble(models=["tiny:1b", "writer:7b"], reply="a cat on a roof, golden hour, 35mm") as ollama:
        page = await signed_in_page(hub, context, "/prompt")
        await page.fill("#f-preview_prompt", "a red bicycle")
        await page.click("#preview-form button")
        assert "a red bicycle" in await page.inner_text("#preview-positive")

        await page.fill("#f-base_url", ollama.url)
        await page.click("#llm-form button")
        assert "Saved the prompt enhancement settings" in await page.inner_text(".flash")
        # No model saved yet: the selector says so rather than showing the first model as if it were saved.
        options = ["(none saved: pick one)", "tiny:1b", "writer:7b"]
        assert await page.locator("#f-model option").all_inner_texts() == options
        await page.select_option("#f-model", "writer:7b")
        await page.click("#llm-form button")
        await page.fill("#f-test_prompt", "a cat")
        await page.click("#llm-test-form button")
        result = await page.inner_text("#enhance-result")
        assert "Before: a cat" in result and "golden hour" in result, result
        await screenshot(page, shots, "prompts")


async def test_styles_are_exported_and_imported(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context)
    exported = await context.request.get(url(hub, "/styles/export?format=a1111_csv"))
    assert exported.status == 200 and "attachment" in exported.headers["content-disposition"]
    assert "name" in (await exported.text()).splitlines()[0]
    await page.goto(url(hub, "/styles"))
    await page.click("#import-box summary")
    await page.select_option("#f-format", "a1111_csv")
    await page.fill("#f-content", 'name,prompt,negative_prompt\nimported-watercolor,"{prompt}, watercolor",photo\n')
    await navigate_by_click(page, "#import-form button[type=submit]")
    assert "1 to add" in await page.inner_text("#import-counts"), await page.inner_text("main")
    await navigate_by_click(page, "#import-confirm button[type=submit]")
    assert "1 added" in await page.inner_text(".flash"), await page.inner_text("main")
    assert "imported-watercolor" in await page.locator(".style-name").all_inner_texts()


async def test_a_style_is_edited_in_place(hub: Hub, context: BrowserContext) -> None:
    page = await signed_in_page(hub, context, "/styles?new=1")  # the editor opens at the top
    await page.fill("#f-name", "to-edit")
    await page.fill("#f-positive", "{prompt}, first version")
    await page.click("#style-form button[type=submit]")
    await page.locator("tr", has_text="to-edit").locator("a:has-text('Edit')").click()
    assert await page.input_value("#f-positive") == "{prompt}, first version"
    await page.fill("#f-name", "edited")
    await page.fill("#f-positive", "{prompt}, second version")
    await page.check("input[name=is_default]")
    await page.click("#style-form button[type=submit]")
    assert "Saved style edited" in await page.inner_text(".flash")
    names = await page.locator(".style-name").all_inner_texts()
    assert "edited" in names and "to-edit" not in names
    assert "default" in await page.locator("tr", has_text="second version").inner_text()


async def test_api_keys_are_created_shown_once_and_revoked(hub: Hub, context: BrowserContext, shots: Path) -> None:
    gateway = hub.start("gateway")  # the gateway owns the keys; started for this test only
    try:
        await gateway.wait_healthy(hub.nc)
        page = await signed_in_page(hub, context, "/api-keys")
        await page.fill("#f-name", "claude-desktop")
        await page.click("button:has-text('Create key')")
        secret = (await page.inner_text("#new-secret pre >> nth=0")).strip()
        assert len(secret) >= 20
        webhook_secret = (await page.inner_text("#new-webhook-secret")).strip()
        assert webhook_secret.startswith("whsec_") and len(webhook_secret) > 40
        row = page.locator("#keys tr", has_text="claude-desktop")
        assert "active" in await row.inner_text()
        assert secret[:6] in await row.inner_text()  # the prefix, never the whole secret
        await screenshot(page, shots, "api-keys")
        await page.reload()
        assert secret not in await page.content() and webhook_secret not in await page.content()
        page.on("dialog", lambda dialog: dialog.accept())
        await row.locator("button:has-text('Revoke')").click()
        assert "Revoked the key claude-desktop" in await page.inner_text(".flash")
        assert "revoked" in await page.locator("#keys tr", has_text="claude-desktop").inner_text()
        assert "its own jobs" in await page.locator("#keys tr", has_text="claude-desktop").inner_text()
        # A key that reads every job (a monitoring client) is an explicit choice on the form.
        await page.fill("#f-name", "monitoring")
        await page.check("#f-scope-read-all")
        await page.click("button:has-text('Create key')")
        assert "jobs:read-all" in await page.locator("#keys tr", has_text="monitoring").inner_text()
        listing = await call(hub.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
        assert [k.scopes for k in listing.keys if k.name == "monitoring"] == [["jobs:read-all"]]
        # Limits are set on the form; a value out of range names its box and keeps what was typed.
        await page.fill("#f-name", "batch-robot")
        await page.fill("#f-max_waiting", "0")
        await page.fill("#f-max_images_per_job", "2")
        await page.click("button:has-text('Create key')")
        assert "max_waiting" in await page.inner_text("#error-max_waiting")
        assert await page.input_value("#f-max_images_per_job") == "2"
        await page.fill("#f-max_waiting", "5")
        await page.fill("#f-max_running", "1")
        await page.fill("#f-weight", "3")
        await page.click("button:has-text('Create key')")
        row = page.locator("#keys tr", has_text="batch-robot")
        assert "5 waiting, 2 images/job, 1 running, weight 3" in await row.inner_text()
        listing = await call(hub.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
        assert [k.limits for k in listing.keys if k.name == "batch-robot"] == [
            KeyLimits(max_waiting=5, max_images_per_job=2, max_running=1, weight=3)
        ]
    finally:
        gateway.kill()


async def test_an_img2img_generation_sends_the_uploaded_image(
    hub: Hub, context: BrowserContext, shots: Path, tmp_path: Path
) -> None:
    from dispatch_support import add_instance, remove_instance
    from doubles.png import encode_solid_png

    picture = encode_solid_png(64, 48, (200, 10, 10))
    (tmp_path / "red.png").write_bytes(picture)
    (tmp_path / "notes.png").write_bytes(b"these are words, not pixels")
    checkpoint = await checkpoint_of(hub.nc, "img2img")
    async with ComfyUIDouble(models={"checkpoints": [checkpoint]}, work_seconds=0.5) as comfy:
        await add_instance(hub.nc, comfy, "gpu-img2img")
        try:
            page = await signed_in_page(hub, context, "/generate")
            # The field shows only for render types that take an input image.
            await page.select_option("#f-render_type", "sdxl")
            assert not await page.is_visible("#input-image")
            await page.select_option("#f-render_type", "img2img")
            assert await page.is_visible("#f-input_image_file")
            await page.fill("#f-prompt", "the same scene in watercolour")

            # Not an image: the error stands beside the file field, the rest of the form is kept.
            await page.set_input_files("#f-input_image_file", str(tmp_path / "notes.png"))
            await navigate_by_click(page, "#generate-form button[type=submit]")
            assert "/generate" in page.url
            assert "not a PNG, JPEG, WebP or GIF" in await page.inner_text("#error-input_image_file")
            assert await page.input_value("#f-prompt") == "the same scene in watercolour"
            assert await page.is_visible("#f-input_image_file")  # still img2img, still shown
            await screenshot(page, shots, "generate-input-image-error")

            # Neither file nor URL for a render type that needs one: said beside the field too.
            await navigate_by_click(page, "#generate-form button[type=submit]")
            assert "starts from an input image" in await page.inner_text("#error-input_image_file")

            await page.set_input_files("#f-input_image_file", str(tmp_path / "red.png"))
            await page.wait_for_selector("#input-preview:not([hidden])")
            await page.set_viewport_size({"width": 390, "height": 844})
            await screenshot(page, shots, "generate-img2img-phone")
            await page.set_viewport_size({"width": 1280, "height": 860})
            await screenshot(page, shots, "generate-img2img")
            await navigate_by_click(page, "#generate-form button[type=submit]")
            assert "/jobs/" in page.url, await page.inner_text("main")
            await page.wait_for_selector("#outputs img", timeout=60_000)
            assert await page.inner_text("#job-status") == "completed"
            job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
            # The double got exactly the uploaded bytes, and the workflow loads that file.
            assert (comfy.input_dir / "hub" / f"{job_id}.png").read_bytes() == picture
            loaded = [
                node["inputs"]["image"]
                for node in comfy.prompts_received[-1]["prompt"].values()
                if node["class_type"] == "LoadImage"
            ]
            assert loaded == [f"hub/{job_id}.png"]
            await screenshot(page, shots, "job-img2img")

            # The URL alternative: the hub fetches the picture (served here by the double itself).
            await page.goto(url(hub, "/generate"))
            await page.select_option("#f-render_type", "img2img")
            await page.fill("#f-prompt", "again, from a URL")
            await page.fill("#f-input_image_url", f"{comfy.url}/view?filename={job_id}.png&subfolder=hub&type=input")
            await navigate_by_click(page, "#generate-form button[type=submit]")
            assert "/jobs/" in page.url, await page.inner_text("main")
            await page.wait_for_selector("#outputs img", timeout=60_000)
            by_url = page.url.rstrip("/").rsplit("/", 1)[-1]
            assert (comfy.input_dir / "hub" / f"{by_url}.png").read_bytes() == picture
        finally:
            await remove_instance(hub.nc, "gpu-img2img")


async def test_an_input_image_too_big_for_the_form_is_named_beside_its_field(
    hub: Hub, context: BrowserContext, tmp_path: Path
) -> None:
    from doubles.png import encode_solid_png

    big = tmp_path / "huge.png"
    big.write_bytes(encode_solid_png(8, 8, (0, 0, 0)) + b"\0" * (25 * 1024 * 1024 + 1))  # the hub's limit
    page = await signed_in_page(hub, context, "/generate")
    await page.select_option("#f-render_type", "img2img")
    await page.fill("#f-prompt", "x")
    await page.set_input_files("#f-input_image_file", str(big))
    await page.wait_for_selector("#check-input_image_file:not([hidden])")  # said at once, in the browser
    assert "too big" in await page.inner_text("#check-input_image_file")
    await navigate_by_click(page, "#generate-form button[type=submit]")
    error = await page.inner_text("#error-input_image_file")
    assert "huge.png is" in error and "up to" in error and "URL" in error, error

    # A URL that is not http(s) is refused beside the URL field.
    await page.fill("#f-input_image_url", "ftp://example.org/photo.png")
    await navigate_by_click(page, "#generate-form button[type=submit]")
    assert "http://" in await page.inner_text("#error-input_image_url")
    assert await page.input_value("#f-input_image_url") == "ftp://example.org/photo.png"


async def test_a_render_type_is_edited_and_deleted(hub: Hub, context: BrowserContext, shots: Path) -> None:
    from contracts.messages.render_types import (
        GetRenderType,
        GetRenderTypeHistory,
        ListRenderTypes,
        RenderType,
        SaveRenderType,
    )
    from contracts.runtime.bus import call

    sdxl = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    await call(
        hub.nc,
        endpoints.Registry.SAVE,
        SaveRenderType(
            render_type=RenderType(name="edit-me", workflow=sdxl.workflow, parameter_map=sdxl.parameter_map)
        ),
    )
    page = await signed_in_page(hub, context, "/render-types/edit-me")
    await navigate_by_click(page, "#edit-link")
    assert "prompt:" in await page.input_value("#f-parameter_map")
    assert '"class_type"' in await page.input_value("#f-workflow")

    # A broken map line, then a size the registry refuses: each error beside its field, nothing saved.
    await page.fill("#f-description", "Edited <b>in</b> the UI")
    await page.fill("#f-parameter_map", "prompt 6/text")
    await navigate_by_click(page, "#edit-form button[type=submit]")
    assert "line 1" in await page.inner_text("#error-parameter_map")
    assert await page.input_value("#f-description") == "Edited <b>in</b> the UI"
    good_map = "\n".join(
        f"{name}: " + ", ".join(f"{slot.node_id}/{slot.input_name}" for slot in slots)
        for name, slots in sdxl.parameter_map.slots.items()
    )
    await page.fill("#f-parameter_map", good_map)
    await page.fill("#f-width", "1001")
    await navigate_by_click(page, "#edit-form button[type=submit]")
    assert (await page.inner_text("#error-width")).strip()
    await screenshot(page, shots, "render-type-edit-error")
    unchanged = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="edit-me"))
    assert unchanged.version == 1 and unchanged.description == ""

    await page.fill("#f-width", "768")
    await page.uncheck("input[name=enabled]")
    await page.fill("#f-note", "narrower, off for now")
    await navigate_by_click(page, "#edit-form button[type=submit]")
    assert "Saved render type edit-me (version 2)" in await page.inner_text(".flash")
    assert "Edited <b>in</b> the UI" in await page.inner_text("main")  # shown as text, not markup
    saved = await call(hub.nc, endpoints.Registry.GET, GetRenderType(name="edit-me"))
    assert (saved.version, saved.defaults.width, saved.enabled) == (2, 768, False)
    assert saved.description == "Edited <b>in</b> the UI"
    history = await call(hub.nc, endpoints.Registry.HISTORY, GetRenderTypeHistory(name="edit-me"))
    assert "narrower, off for now" in [v.note for v in history.versions]
    await screenshot(page, shots, "render-type-edited")
    # Saved again as it is: no new version, and the page says so.
    await page.goto(url(hub, "/render-types/edit-me/edit"))
    await navigate_by_click(page, "#edit-form button[type=submit]")
    assert "Nothing changed: edit-me stays at version 2." in await page.inner_text(".flash")

    # The default render type: the confirmation says so and the registry's refusal is shown.
    await page.goto(url(hub, "/render-types/sdxl/delete"))
    assert "is the default render type" in await page.inner_text("#delete-confirm")
    await navigate_by_click(page, "#delete-form button[type=submit]")
    assert "make another one the default first" in await page.inner_text("#delete-error")
    assert "sdxl" in [rt.name for rt in (await call(hub.nc, endpoints.Registry.LIST, ListRenderTypes())).render_types]

    await page.goto(url(hub, "/render-types/edit-me"))
    await navigate_by_click(page, "#delete-link")
    assert "2 versions" in await page.inner_text("#delete-confirm")
    await screenshot(page, shots, "render-type-delete")
    await navigate_by_click(page, "#delete-form button[type=submit]")
    assert "Deleted render type edit-me and its 2 versions" in await page.inner_text(".flash")
    assert "edit-me" not in await page.inner_text("#render-types")
    missing = await page.goto(url(hub, "/render-types/edit-me"))
    assert missing is not None and missing.status == 404


PAGES = (
    ("/", "dashboard"),
    ("/instances", "instances"),
    ("/render-types", "render-types"),
    ("/render-types/sdxl", "render-type-sdxl"),
    ("/render-types/sdxl/edit", "render-type-sdxl-edit"),
    ("/styles", "styles"),
    ("/prompt", "prompts"),
    ("/generate", "generate"),
    ("/stats", "stats"),
    ("/api-keys", "api-keys"),
    ("/api-keys/defaults", "api-key-defaults"),
    ("/maintenance", "maintenance"),
    ("/status", "services"),
)


async def test_every_page_fits_a_phone_and_a_laptop(hub: Hub, context: BrowserContext, shots: Path) -> None:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await sign_in(page, hub.ui_url)  # type: ignore[attr-defined]
    for width, height, suffix in ((390, 844, "phone"), (1366, 900, "laptop")):
        await page.set_viewport_size({"width": width, "height": height})
        for path, name in PAGES:
            response = await page.goto(url(hub, path))
            assert response is not None and response.status == 200, (path, response and response.status)
            title = await page.title()
            # A title block left open swallows the page's markup into the title.
            assert title.endswith(" · GenImage Hub") and "<" not in title and len(title) < 80, (path, title)
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow}px wider than a {width}px screen"
            await screenshot(page, shots, f"{name}-{suffix}")
    assert not errors, errors  # no script on any page fails


# Stock image nodes only, none with sampler steps: ComfyUI reports them by node, not by step.
IMAGE_NODES = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 4, "sigma": 1.0}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "hub/nodes"}},
}


async def test_a_node_only_job_moves_the_live_bar_from_its_first_node(hub: Hub, context: BrowserContext) -> None:
    from dispatch_support import add_instance, remove_instance, submit

    from contracts.messages.render_types import RenderType, SaveRenderType

    saving = SaveRenderType(render_type=RenderType(name="ui-image-nodes", workflow=IMAGE_NODES))
    await call(hub.nc, endpoints.Registry.SAVE, saving)
    async with ComfyUIDouble(work_seconds=4.0) as comfy:
        await add_instance(hub.nc, comfy, "gpu-nodes")
        try:
            await context.add_init_script(RECORD_PROGRESS)
            page = await signed_in_page(hub, context)
            job_id = (await submit(hub.nc, "", render_type="ui-image-nodes")).job_id
            await page.goto(url(hub, f"/jobs/{job_id}"))
            await page.wait_for_function("document.getElementById('job-step').textContent.includes(' of 4')")
            step = await page.inner_text("#job-step")
            await page.wait_for_function("document.getElementById('job-status').textContent === 'completed'")
            widths = await page.evaluate("JSON.parse(sessionStorage.getItem('widths') || '[]')")
            partial = [w for w in widths if w not in ("0%", "100%", "")]
            assert len(set(partial)) >= 2, f"the bar did not follow the nodes: {widths}"
            assert "% · node " in step and "step" not in step, step  # no sampler: nodes, not steps
        finally:
            await remove_instance(hub.nc, "gpu-nodes")
