"""Admin sessions live in a NATS KV bucket: they survive a UI restart, every UI replica knows them, and a
sign-out ends them everywhere. Also: a sign-in gets a fresh session id, visitors who are not signed in leave
nothing on the server, and a form rendered by one replica is accepted by another (shared CSRF key)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from contracts.streams import UI_SESSIONS
from hub_deploy.natsserver import free_port

PASSWORD = "sessions-Test-pass"
# A page that needs the admin and asks no other service (the UI runs alone here).
GUARDED = "/render-types/new"

pytestmark = pytest.mark.timeout(120)


def csrf_token(html: str) -> str:
    return html.split('name="_csrf_token" value="')[1].split('"')[0]


def cookie_of(response: httpx.Response, name: str) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return None


async def send(client: httpx.AsyncClient, method: str, path: str, cookies: dict[str, str], **kwargs) -> httpx.Response:
    """One request with exactly these cookies (the client's own jar is not used)."""
    client.cookies.clear()
    header = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return await client.request(method, path, headers={"Cookie": header}, **kwargs)


async def test_a_session_outlives_a_restart_is_shared_by_replicas_and_ends_at_sign_out(
    nc, start_service, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    port_a, port_b = free_port(), free_port()
    ui_a = start_service("ui", data_dir=data, HUB_UI_PORT=str(port_a), HUB_ADMIN_PASSWORD=PASSWORD)
    await ui_a.wait_healthy(nc)
    ui_b = start_service("ui", data_dir=data, HUB_UI_PORT=str(port_b), HUB_ADMIN_PASSWORD=PASSWORD)
    await ui_b.wait_healthy(nc)
    kv = await nc.jetstream().key_value(UI_SESSIONS.name)
    assert (await kv.status()).ttl == UI_SESSIONS.ttl_s  # idle sessions expire by themselves

    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}") as a,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_b}") as b,
    ):
        # Not signed in: no session is stored and no session cookie is set.
        login_page = await send(a, "GET", "/login", {})
        assert cookie_of(login_page, "session") is None
        csrf_cookie = cookie_of(login_page, "csrftoken")
        assert csrf_cookie
        refused = await send(a, "GET", GUARDED, {})
        assert refused.headers["location"].startswith("/login")

        # A session id planted before sign-in is not the one the admin gets (no session fixation).
        planted = "ab" * 32
        signed_in = await send(
            a,
            "POST",
            "/login?next=/render-types/new",
            {"csrftoken": csrf_cookie, "session": planted},
            data={"username": "admin", "password": PASSWORD, "_csrf_token": csrf_token(login_page.text)},
        )
        assert signed_in.status_code in (302, 303) and signed_in.headers["location"] == GUARDED, signed_in.text
        session_id = cookie_of(signed_in, "session")
        assert session_id and session_id != planted
        set_cookie = next(h for h in signed_in.headers.get_list("set-cookie") if h.startswith("session=")).lower()
        assert "httponly" in set_cookie and "samesite=lax" in set_cookie
        assert (await kv.get(session_id)).value  # stored server side; the cookie holds only the id
        cookies = {"csrftoken": csrf_cookie, "session": session_id}

        # The other replica knows the session.
        page_on_b = await send(b, "GET", GUARDED, cookies)
        assert page_on_b.status_code == 200, page_on_b.text

        # The first replica restarts: the same cookie still works there.
        assert await ui_a.stop() == 0
        ui_a = start_service("ui", data_dir=data, HUB_UI_PORT=str(port_a), HUB_ADMIN_PASSWORD=PASSWORD)
        await ui_a.wait_healthy(nc)
        page_on_a = await send(a, "GET", GUARDED, cookies)
        assert page_on_a.status_code == 200, page_on_a.text

        # A form rendered by the restarted replica is accepted by the other (shared CSRF key): sign out on B.
        signed_out = await send(b, "POST", "/logout", cookies, data={"_csrf_token": csrf_token(page_on_a.text)})
        assert signed_out.status_code in (302, 303) and signed_out.headers["location"] == "/login", signed_out.text
        with pytest.raises((KeyNotFoundError, KeyDeletedError)):
            await kv.get(session_id)

        # The old cookie is dead on every replica.
        for client in (a, b):
            refused = await send(client, "GET", GUARDED, cookies)
            assert refused.status_code in (302, 303) and refused.headers["location"].startswith("/login")


async def test_sign_in_returns_only_to_a_page_of_this_site(nc, start_service) -> None:
    port = free_port()
    ui = start_service("ui", HUB_UI_PORT=str(port), HUB_ADMIN_PASSWORD=PASSWORD)
    await ui.wait_healthy(nc)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for target, expected in (("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/styles", "/styles")):
            login_page = await send(client, "GET", "/login", {}, params={"next": target})
            answer = await send(
                client,
                "POST",
                "/login",
                {"csrftoken": cookie_of(login_page, "csrftoken") or ""},
                params={"next": target},
                data={"username": "admin", "password": PASSWORD, "_csrf_token": csrf_token(login_page.text)},
            )
            assert answer.headers["location"] == expected, (target, answer.headers)
