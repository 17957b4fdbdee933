"""The admin account of the UI: created from HUB_ADMIN_PASSWORD, stored hashed, explained when missing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from hub_deploy.natsserver import free_port


async def test_without_a_password_the_login_page_says_how_to_set_one(nc, start_service, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    ui = start_service("ui", data_dir=data, HUB_UI_PORT=str(port), HUB_ADMIN_PASSWORD="")
    await ui.wait_healthy(nc)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        page = await client.get("/login")
        assert page.status_code == 200
        assert "HUB_ADMIN_PASSWORD" in page.text and 'type="password"' not in page.text
        assert (await client.get("/")).headers["location"].startswith("/login")
    await ui.stop()

    ui = start_service("ui", data_dir=data, HUB_UI_PORT=str(port), HUB_ADMIN_PASSWORD="s3cret-Pass")
    await ui.wait_healthy(nc)
    rows = sqlite3.connect(data / "ui.sqlite3").execute("SELECT username, password_hash FROM admin_account").fetchall()
    assert len(rows) == 1 and rows[0][0] == "admin"
    assert "s3cret-Pass" not in rows[0][1] and rows[0][1].startswith("scrypt$")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        login_page = await client.get("/login")
        assert 'type="password"' in login_page.text
        token = login_page.text.split('name="_csrf_token" value="')[1].split('"')[0]
        signed_in = await client.post(
            "/login", data={"username": "admin", "password": "s3cret-Pass", "_csrf_token": token}
        )
        assert signed_in.status_code in (301, 302, 303) and signed_in.headers["location"] == "/"
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert (await client.get("/status")).status_code == 200
