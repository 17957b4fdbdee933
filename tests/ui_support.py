"""Shared pieces of the admin UI tests: the whole hub (registry, prompt, dispatch, stats, ui) as real processes,
and a headless Debian chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path

import httpx
from dispatch_support import Hub
from playwright.async_api import Browser, Page, Playwright, async_playwright

from hub_deploy.natsserver import free_port

ADMIN_PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "ui"


async def start_ui_hub(hub: Hub, **ui_env: str) -> str:
    """Start every service the UI talks to plus the UI itself; returns the UI's base URL."""
    port = free_port()
    for name in ("registry", "prompt", "dispatch", "stats"):
        hub.start(name)
    hub.start("ui", HUB_UI_PORT=str(port), HUB_ADMIN_PASSWORD=ADMIN_PASSWORD, **ui_env)
    for name in ("registry", "prompt", "dispatch", "stats", "ui"):
        await hub.processes[name].wait_healthy(hub.nc)
    return f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def ui_hub(nats_url: str, data_dir: Path, **ui_env: str) -> AsyncIterator[Hub]:
    """Every service the UI talks to plus the UI (its base URL in `hub.ui_url`), stopped on exit."""
    import nats

    nc = await nats.connect(nats_url)
    running = Hub(nats_url=nats_url, data_dir=data_dir, nc=nc)
    try:
        running.ui_url = await start_ui_hub(running, **ui_env)  # type: ignore[attr-defined]
        yield running
    finally:
        running.stop_all()
        await nc.close()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless chromium, closed on exit."""
    async with async_playwright() as playwright:
        launched = await launch_chromium(playwright)
        yield launched
        await launched.close()


async def launch_chromium(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: `apt-get install -y chromium` (./hub test does it)")
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


async def sign_in(page: Page, base_url: str, password: str = ADMIN_PASSWORD) -> None:
    await page.goto(f"{base_url}/login")
    await page.fill("#password", password)
    await page.click("button[type=submit]")


async def screenshot(page: Page, folder: Path, name: str) -> Path:
    """Full-page screenshot into the test's folder, copied to artifacts/ui/ for people to look at."""
    target = folder / f"{name}.png"
    await page.screenshot(path=str(target), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(target, ARTIFACTS / target.name)
    return target


# -- a signed-in admin over plain HTTP (forms posted as a browser posts them) -------------------------------


class Admin:
    """A signed-in admin's browser, as far as forms go: the session cookie and each page's CSRF token."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str) -> str:
        page = await self.client.get(path)
        assert page.status_code == 200, (path, page.status_code, page.text[:500])
        return page.text

    async def post(
        self, path: str, form: dict[str, str], *, from_page: str, files: dict | None = None
    ) -> httpx.Response:
        token = csrf_of(await self.get(from_page))
        return await self.client.post(path, data={**form, "_csrf_token": token}, files=files)


def csrf_of(html: str) -> str:
    return html.split('name="_csrf_token" value="')[1].split('"')[0]


def field_error(html: str, name: str) -> str:
    found = re.search(rf'<div class="field-error" id="error-{name}">(.*?)</div>', html, re.S)
    return unescape(found.group(1)).strip() if found else ""


def value_of(html: str, name: str) -> str:
    found = re.search(rf'<input id="f-{name}"[^>]*value="([^"]*)"', html)
    return unescape(found.group(1)) if found else ""


@contextlib.asynccontextmanager
async def signed_in_admin(base_url: str) -> AsyncIterator[Admin]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        token = csrf_of((await client.get("/login")).text)
        form = {"username": "admin", "password": ADMIN_PASSWORD, "_csrf_token": token}
        signed_in = await client.post("/login", data=form)
        assert signed_in.status_code in (302, 303), signed_in.text[:300]
        yield Admin(client)
