"""Admin sign-in throttling: after a few failures in a row each attempt waits (the wait doubling), after more
the client address or the user name is locked; an attempt during a wait or lock is refused (429, Retry-After),
even with the right password; two replicas agree (the failures are in the UI's database); after the lock the
admin signs in and is told how many failed sign-ins there were; every step is logged."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from hub_deploy.natsserver import free_port

PASSWORD = "throttle-Test-pass"
# A page that needs the admin and asks no other service (the UI runs alone here).
GUARDED = "/render-types/new"
SETTINGS = {
    "HUB_UI_SIGNIN_FREE_FAILURES": "2",
    "HUB_UI_SIGNIN_DELAY_S": "1",
    "HUB_UI_SIGNIN_LOCK_FAILURES": "4",
    "HUB_UI_SIGNIN_LOCK_S": "4",
}

pytestmark = pytest.mark.timeout(120)


def client_from(address: str, port: int) -> httpx.AsyncClient:
    """An HTTP client whose connections come from `address` (a loopback address: another client to the UI)."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", transport=httpx.AsyncHTTPTransport(local_address=address)
    )


async def sign_in(client: httpx.AsyncClient, password: str, username: str = "admin") -> httpx.Response:
    login_page = await client.get("/login")
    token = login_page.text.split('name="_csrf_token" value="')[1].split('"')[0]
    return await client.post(
        f"/login?next={GUARDED}", data={"username": username, "password": password, "_csrf_token": token}
    )


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    return int(response.headers["retry-after"])


async def test_failed_sign_ins_are_delayed_then_locked_for_the_client_and_the_account(
    nc, start_service, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    port_a, port_b = free_port(), free_port()
    ui_a = start_service("ui", data_dir=data, HUB_UI_PORT=str(port_a), HUB_ADMIN_PASSWORD=PASSWORD, **SETTINGS)
    await ui_a.wait_healthy(nc)
    ui_b = start_service("ui", data_dir=data, HUB_UI_PORT=str(port_b), HUB_ADMIN_PASSWORD=PASSWORD, **SETTINGS)
    await ui_b.wait_healthy(nc)

    async with client_from("127.0.0.1", port_a) as a, client_from("127.0.0.2", port_b) as b_other_client:
        # Two failures are free; then the next attempt waits 1 s, even with the right password.
        for _ in range(2):
            wrong = await sign_in(a, "guess")
            assert wrong.status_code == 200 and "Wrong user name or password." in wrong.text
        early = await sign_in(a, PASSWORD)
        assert retry_after(early) == 1 and "Wait 1 second before the next attempt" in early.text
        assert "session" not in early.cookies

        # The third failure doubles the wait.
        await asyncio.sleep(1.1)
        assert (await sign_in(a, "guess")).status_code == 200
        assert retry_after(await sign_in(a, "guess")) == 2

        # The fourth locks: the right password is refused, on the other replica too, and from another client
        # (the user name is locked as well as the address).
        await asyncio.sleep(2.1)
        assert (await sign_in(a, "guess")).status_code == 200
        locked = await sign_in(a, PASSWORD)
        assert retry_after(locked) == 4
        assert "Sign-in is locked for this address after 4 failed attempts. Try again in 4 seconds." in locked.text
        elsewhere = await sign_in(b_other_client, PASSWORD)
        assert 3 <= retry_after(elsewhere) <= 4 and "locked for this user name" in elsewhere.text

        # After the lock the right password works, and the admin is told about the failures.
        await asyncio.sleep(retry_after(await sign_in(a, PASSWORD)) + 0.1)
        signed_in = await sign_in(a, PASSWORD)
        assert signed_in.status_code in (302, 303) and signed_in.headers["location"] == GUARDED, signed_in.text
        first_page = await a.get(GUARDED)
        assert first_page.status_code == 200
        assert "4 failed sign-ins since your last visit" in first_page.text and "from 127.0.0.1" in first_page.text
        assert "failed sign-ins" not in (await a.get(GUARDED)).text  # told once

        # Failures from one client under changing user names lock that client, not the admin's account.
        for number, wait in ((1, 0), (2, 0), (3, 1.1), (4, 2.1)):
            await asyncio.sleep(wait)
            assert (await sign_in(b_other_client, "guess", username=f"someone-{number}")).status_code == 200
        from_other = await sign_in(b_other_client, PASSWORD)
        assert retry_after(from_other) == 4 and "locked for this address" in from_other.text
        a.cookies.clear()
        assert (await sign_in(a, PASSWORD)).status_code in (302, 303)

    on_a, on_b = events(ui_a.log()), events(ui_b.log())
    assert kinds(on_a) == {"sign-in failed": 4, "sign-in refused": 4, "sign-in locked": 1, "signed in": 2}
    assert [e["failed_since_last"] for e in on_a if e["event"] == "signed in"] == [4, 0]
    locked_event = next(e for e in on_a if e["event"] == "sign-in locked")
    assert locked_event["locked"] == {"client": 4, "account": 4} and locked_event["client"] == "127.0.0.1"
    assert kinds(on_b) == {"sign-in refused": 2, "sign-in failed": 4, "sign-in locked": 1}
    assert [e["username"] for e in on_b if e["event"] == "sign-in failed"][-1] == "someone-4"


def events(log: str) -> list[dict]:
    """The service's JSON log lines about signing in."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if "sign" in line.get("event", "")]


def kinds(log_events: list[dict]) -> dict[str, int]:
    return dict(Counter(event["event"] for event in log_events))
