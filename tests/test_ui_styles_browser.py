"""The Styles page, its import preview and the style picker in a real headless chromium, against the real
services on a real NATS server, with a library of more than 1,000 styles: every message the admin needs is
checked to be inside the viewport, not merely somewhere in the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dispatch_support import Hub
from playwright.async_api import Browser, BrowserContext, Locator, Page, async_playwright
from ui_support import launch_chromium, screenshot, sign_in

from contracts import endpoints
from contracts.messages.styles import ImportStyles, ListStyles
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
    import nats
    from ui_support import start_ui_hub

    nc = await nats.connect(nats_server.url)
    running = Hub(nats_url=nats_server.url, data_dir=tmp_path_factory.mktemp("ui-styles"), nc=nc)
    running.ui_url = await start_ui_hub(running)  # type: ignore[attr-defined]
    report = await call(
        nc, endpoints.Prompt.STYLES_IMPORT, ImportStyles(format="a1111_csv", content=library_csv(LIBRARY_SIZE))
    )
    assert len(report.added) == LIBRARY_SIZE and report.separators == 10
    yield running
    running.stop_all()
    await nc.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await launch_chromium(playwright)
        yield launched
        await launched.close()


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
