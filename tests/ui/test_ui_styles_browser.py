"""The Styles page, its import preview and the style picker in a real headless chromium, against the real
services on a real NATS server, with a library of more than 1,000 styles: every message the admin needs is
checked to be inside the viewport, not merely somewhere in the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dispatch_support import Hub
from playwright.async_api import Browser, BrowserContext, Locator, Page
from ui_support import screenshot, sign_in, ui_hub

from contracts import endpoints
from contracts.messages.render_types import ListRenderTypes
from contracts.messages.styles import GetStyle, ImportStyles, ListStyles, SaveStyle, Style
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.timeout(180)

LIBRARY_SIZE = 1000
# A styles.csv as people keep them: section rows, odd quoting A1111 reads, a repeated name, a bad row.
MESSY_CSV = (
    "name,prompt,negative_prompt\n"
    ">>>>>> Generic Styles,,\n"
    'messy-cinematic,"cinematic still of {prompt}, ""teal"" and orange",cartoon\n'
    'messy-odd-quotes,"a "quoted" word, {prompt}", " "\n'
    "messy-unquoted,a, b, c,d\n"
    "=== Photo ===,,\n"
    "messy-photo,{prompt} photo,blurry\n"
    "MESSY-PHOTO,{prompt} again,\n"
)


def library_csv(size: int) -> str:
    rows = ["name,prompt,negative_prompt"]
    for index in range(size):
        if index % 100 == 0:
            rows.append(f">>>>>> Section {index // 100:02d},,")
        rows.append(f"bulk-{index:04d},{{prompt}} in look {index},ugly {index}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
async def hub(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    async with ui_hub(nats_server.url, tmp_path_factory.mktemp("ui-styles")) as running:
        report = await call(
            running.nc,
            endpoints.Prompt.STYLES_IMPORT,
            ImportStyles(format="a1111_csv", content=library_csv(LIBRARY_SIZE)),
        )
        assert len(report.added) == LIBRARY_SIZE and report.separators == 10
        yield running


@pytest.fixture
async def page(browser: Browser, hub: Hub) -> AsyncIterator[Page]:
    context: BrowserContext = await browser.new_context(viewport={"width": 1280, "height": 860})
    opened = await context.new_page()
    await sign_in(opened, hub.ui_url)  # type: ignore[attr-defined]
    yield opened
    await context.close()


def url(hub: Hub, path: str) -> str:
    return f"{hub.ui_url}{path}"  # type: ignore[attr-defined]


async def click_to_load(page: Page, selector: str) -> None:
    async with page.expect_navigation():
        await page.click(selector)


async def assert_in_viewport(page: Page, target: Locator) -> None:
    """The element's top part is on screen as the page stands (not below or above what the admin sees)."""
    await target.wait_for(state="visible")
    box = await target.bounding_box()
    height = page.viewport_size["height"]  # type: ignore[index]
    assert box is not None
    assert box["y"] >= 0 and box["y"] + min(box["height"], 40) <= height, (box, height)


async def test_a_messy_a1111_csv_is_previewed_then_imported(hub: Hub, page: Page, tmp_path: Path) -> None:
    await page.goto(url(hub, "/styles"))
    await page.click("#import-box summary")
    await page.select_option("#f-format", "a1111_csv")
    await page.fill("#f-content", "title,text\nx,y\n")  # a header A1111 cannot use: the whole file is refused
    await click_to_load(page, "#import-form button[type=submit]")
    await assert_in_viewport(page, page.locator("#error-import"))
    assert "lacks the column" in await page.inner_text("#error-import")
    assert await page.input_value("#f-format") == "a1111_csv"  # the chosen format is kept after an error

    await page.fill("#f-content", MESSY_CSV)
    await page.fill("#f-import-category", "from-test")
    await click_to_load(page, "#import-form button[type=submit]")
    preview = page.locator("#import-preview")
    await assert_in_viewport(page, preview)
    counts = await page.inner_text("#import-counts")
    assert "3 to add" in counts and "0 to update" in counts and "2 skipped" in counts and "2 section rows" in counts
    skipped = await page.inner_text("#import-skipped")
    assert "line 5" in skipped and "double quotes" in skipped
    assert "line 8" in skipped and "same name as line 7" in skipped
    await page.click("#import-preview details summary")
    rows = await page.locator("#import-rows tbody tr").all_inner_texts()
    assert len(rows) == 7 and "separator" in rows[0] and "Generic Styles" in rows[0]
    await screenshot(page, tmp_path, "styles-import-preview")
    styles_before = await call(hub.nc, endpoints.Prompt.STYLES_LIST, ListStyles())
    assert "messy-photo" not in {s.name for s in styles_before.styles}  # the preview wrote nothing

    await click_to_load(page, "#import-confirm button[type=submit]")
    flash = page.locator(".flash")
    await assert_in_viewport(page, flash)
    assert "3 added" in await flash.inner_text() and "2 section rows used as categories" in await flash.inner_text()
    await page.select_option("select[name=category]", "Generic Styles")
    await click_to_load(page, "#filter-form button")
    names = await page.locator(".style-name").all_inner_texts()
    assert names == ["messy-cinematic", "messy-odd-quotes"]


async def test_an_uploaded_file_gives_its_name_as_the_default_category(hub: Hub, page: Page, tmp_path: Path) -> None:
    upload = tmp_path / "film-looks.csv"
    upload.write_text('name,prompt,negative_prompt\nupload-grain,"{prompt}, film grain",\n', encoding="utf-8")
    await page.goto(url(hub, "/styles"))
    await page.click("#import-box summary")
    await page.select_option("#f-format", "a1111_csv")
    await page.set_input_files("#f-file", str(upload))
    await click_to_load(page, "#import-form button[type=submit]")
    await page.click("#import-preview details summary")
    assert "film-looks" in await page.locator("#import-rows tbody tr", has_text="upload-grain").inner_text()
    await click_to_load(page, "#import-confirm button[type=submit]")
    assert "1 added" in await page.inner_text(".flash")
    stored = await call(hub.nc, endpoints.Prompt.STYLES_GET, GetStyle(name="upload-grain"))
    assert stored.category == "film-looks"


async def test_a_thousand_styles_are_paged_filtered_and_changed_in_bulk(hub: Hub, page: Page, tmp_path: Path) -> None:
    await page.goto(url(hub, "/styles"))
    assert await page.locator(".style-name").count() == 50
    assert await page.evaluate("document.documentElement.scrollHeight") < 8000  # was 62,000 px for 788 styles
    assert "of 10" in await page.inner_text("#list-count")
    await screenshot(page, tmp_path, "styles")

    await page.fill("input[name=q]", "bulk-0042")
    await click_to_load(page, "#filter-form button")
    assert await page.locator(".style-name").all_inner_texts() == ["bulk-0042"]

    await page.goto(url(hub, "/styles?category=Section+03&page=2"))
    assert await page.locator(".style-name").first.inner_text() == "bulk-0350"
    await page.locator("tr", has_text="bulk-0397").locator("input[name=names]").check()
    await page.locator("tr", has_text="bulk-0398").locator("input[name=names]").check()
    await page.select_option("#bulk-action", "set_category")
    await page.fill("#bulk-category", "Picked")
    await click_to_load(page, "#bulk-apply")
    flash = page.locator(".flash")
    await assert_in_viewport(page, flash)
    assert "Recategorised 2 styles into 'Picked'" in await flash.inner_text()
    assert "page=2" in page.url and "Section+03" in page.url  # back where the admin was

    await page.goto(url(hub, "/styles?category=Picked"))
    await page.check("#check-page")
    await page.select_option("#bulk-action", "disable")
    await click_to_load(page, "#bulk-apply")
    assert "Disabled 2 styles" in await page.inner_text(".flash")
    assert await page.locator(".pill", has_text="disabled").count() == 2

    page.on("dialog", lambda dialog: dialog.accept())
    await page.check("#check-page")
    await page.select_option("#bulk-action", "delete")
    await click_to_load(page, "#bulk-apply")
    assert "Deleted 2 styles" in await page.inner_text(".flash")
    assert await page.locator(".style-name").count() == 0


async def test_the_editor_opens_where_the_admin_is_and_errors_show_in_view(hub: Hub, page: Page) -> None:
    await page.goto(url(hub, "/styles?page=5"))
    await page.locator("a[rel=next]").scroll_into_view_if_needed()
    last = page.locator("tr").last
    await last.locator("a:has-text('Edit')").click()
    await page.wait_for_load_state()
    await assert_in_viewport(page, page.locator("#f-name"))
    await page.fill("#f-positive", "art of { prompt }")  # a misspelt slot
    await click_to_load(page, "#style-form button[type=submit]")
    await assert_in_viewport(page, page.locator(".flash.error, .field-error").first)
    assert "{prompt}" in await page.inner_text("#style-editor")

    await page.goto(url(hub, "/styles?page=3"))
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.on("dialog", lambda dialog: dialog.accept())
    async with page.expect_navigation():
        await page.locator("tr").last.locator("button:has-text('Delete')").click()
    flash = page.locator(".flash")
    await assert_in_viewport(page, flash)
    assert "Deleted style" in await flash.inner_text()
    assert "page=3" in page.url


async def test_the_style_picker_finds_styles_among_a_thousand_and_explains_what_does_not_fit(
    hub: Hub, page: Page, tmp_path: Path
) -> None:
    listed = await call(hub.nc, endpoints.Registry.LIST, ListRenderTypes(include_disabled=False))
    default = next(rt.name for rt in listed.render_types if rt.is_default)
    elsewhere = next(rt.name for rt in listed.render_types if not rt.is_default)  # a render type that exists
    other = Style(name="picker-elsewhere", positive="{prompt}, elsewhere", render_types=[elsewhere])
    await call(hub.nc, endpoints.Prompt.STYLES_SAVE, SaveStyle(style=other))

    await page.goto(url(hub, "/generate"))
    assert await page.locator("input[type=checkbox][name=styles]").count() == 0  # no list of 1,000 boxes
    assert await page.evaluate("document.documentElement.scrollHeight") < 3000
    search = page.locator("#picker-search")
    await search.fill("bulk-0777")
    option = page.locator(".picker-option")
    assert await option.count() == 1
    await assert_in_viewport(page, option.first)
    await option.first.click()
    chip = page.locator(".chip", has_text="bulk-0777")
    await assert_in_viewport(page, chip)
    assert await page.is_checked("input[name=style_mode][value=chosen]")  # choosing a style means "only these"
    assert await page.locator("#picker-chips input[name=styles]").evaluate_all("els => els.map(e => e.value)") == [
        "bulk-0777"
    ]

    await search.fill("section 05")
    assert await page.locator("#picker-results h4").all_text_contents() == ["Section 05"]
    assert "100 styles match; the first 80 are shown" in await page.inner_text(".picker-count")

    await search.fill("picker-elsewhere")
    refused = page.locator(".picker-option", has_text="picker-elsewhere")
    assert await refused.get_attribute("aria-disabled") == "true"
    assert f"made for {elsewhere}, not {default}" in await refused.inner_text()
    await refused.click(force=True)  # a click on it adds nothing
    assert await page.locator(".chip", has_text="picker-elsewhere").count() == 0

    await search.fill("quality")
    assert "default" in await page.locator(".picker-option", has_text="quality").inner_text()
    await screenshot(page, tmp_path, "generate-style-picker")
    await page.click("button[aria-label='Remove bulk-0777']")
    assert await page.locator(".chip").count() == 0


async def test_the_prompt_preview_uses_the_styles_picked_and_shows_in_view(hub: Hub, page: Page) -> None:
    await page.goto(url(hub, "/prompt"))
    await page.fill("#f-preview_prompt", "a cat")
    await page.fill("#picker-search", "bulk-0001")
    await page.press("#picker-search", "Enter")  # picks the first offered style, does not submit
    assert page.url.removeprefix(hub.ui_url) == "/prompt"  # type: ignore[attr-defined]
    await page.fill("#picker-search", "bulk-0002")
    await page.press("#picker-search", "Enter")
    assert await page.locator(".chip").count() == 2
    await click_to_load(page, "#preview-form button[type=submit]")
    preview = page.locator("#preview")
    await assert_in_viewport(page, preview)
    text = await preview.inner_text()
    assert "Styles applied: bulk-0001, bulk-0002" in text, text
    assert "a cat in look 1 in look 2" in text, text
    chips = await page.locator(".chip").evaluate_all("els => els.map(e => e.dataset.name)")
    assert chips == ["bulk-0001", "bulk-0002"]  # the choice is kept on the page that comes back
