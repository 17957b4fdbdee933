"""Shared pieces of the admin UI tests: the whole hub (registry, prompt, dispatch, stats, ui) as real processes,
and a headless Debian chromium driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

from dispatch_support import Hub
from playwright.async_api import Browser, Page, Playwright

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
