"""Limits of API keys set by the admin in the UI (issue 15, part 3): each key's limits changed after its creation,
the defaults a new key starts with, bad input named beside its box; through the real gateway, dispatcher and UI,
forms posted over HTTP as a browser posts them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import GatewayHub, gateway_hub
from ui_support import ADMIN_PASSWORD, Admin, field_error, signed_in_admin, value_of

from contracts import endpoints
from contracts.messages.keys import CreateApiKey, CreatedApiKey, GetKeyDefaults, KeyLimits, SetKeyDefaults
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
async def gw(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHub]:
    async with gateway_hub(nats_server.url, tmp_path_factory.mktemp("key-limits-ui")) as running:
        port = free_port()
        ui = running.hub.start("ui", HUB_UI_PORT=str(port), HUB_ADMIN_PASSWORD=ADMIN_PASSWORD)
        await ui.wait_healthy(running.nc)
        running.ui_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield running


@pytest.fixture
async def admin(gw: GatewayHub) -> AsyncIterator[Admin]:
    async with signed_in_admin(gw.ui_url) as signed_in:  # type: ignore[attr-defined]
        yield signed_in


@pytest.fixture
async def no_defaults(gw: GatewayHub) -> AsyncIterator[None]:
    """The defaults for new keys are the gateway's, shared by the module: each test leaves them unset."""
    yield
    await call(gw.nc, endpoints.Gateway.KEYS_DEFAULTS_SET, SetKeyDefaults(limits=KeyLimits()))


async def new_key(gw: GatewayHub, name: str, limits: KeyLimits | None = None) -> CreatedApiKey:
    return await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name=name, limits=limits))


async def limits_of(gw: GatewayHub, key: CreatedApiKey) -> KeyLimits:
    from contracts.messages.keys import ListApiKeys

    listing = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True))
    return next(k.limits for k in listing.keys if k.key_id == key.key.key_id)


@pytest.mark.parametrize(
    ("box", "typed", "words"),
    [
        ("max_waiting", "0", "from 1 to 100000"),
        ("max_running", "two", "whole number"),
        ("max_images_per_job", "101", "from 1 to 100"),
        ("weight", "0", "from 1 to 1000, or blank for weight 1"),
    ],
)
async def test_a_bad_limit_is_named_beside_its_box_and_nothing_changes(
    gw: GatewayHub, admin: Admin, box: str, typed: str, words: str
) -> None:
    key = await new_key(gw, f"bad-{box}", KeyLimits(max_waiting=7))
    form = {"max_waiting": "3", "max_images_per_job": "2", "max_running": "1", box: typed}
    page = await admin.post(f"/api-keys/{key.key.key_id}/limits", form, from_page="/api-keys")
    assert page.status_code == 200, page.text[:300]
    error = field_error(page.text, box)
    assert f"`{box}`" in error and words in error and "blank for" in error, error
    assert value_of(page.text, box) == typed  # what was typed stays in its box
    assert await limits_of(gw, key) == KeyLimits(max_waiting=7)  # no half-saved change

    page = await admin.post("/api-keys/defaults", form, from_page="/api-keys/defaults")
    assert f"`{box}`" in field_error(page.text, box)
    defaults = await call(gw.nc, endpoints.Gateway.KEYS_DEFAULTS_GET, GetKeyDefaults())
    assert defaults.limits == KeyLimits()


async def test_the_admin_changes_a_keys_limits_and_its_next_request_meets_them(gw: GatewayHub, admin: Admin) -> None:
    key = await new_key(gw, "grows-strict", KeyLimits())
    listing = await admin.get("/api-keys")
    assert f'href="/api-keys/{key.key.key_id}/limits"' in listing
    form = {"max_waiting": "", "max_images_per_job": "1", "max_running": "4", "weight": "5"}
    saved = await admin.post(f"/api-keys/{key.key.key_id}/limits", form, from_page=f"/api-keys/{key.key.key_id}/limits")
    assert saved.status_code in (302, 303), saved.text[:300]
    listing = await admin.get("/api-keys")
    assert "Saved the limits of the key grows-strict" in listing
    assert "1 images/job, 4 running, weight 5" in listing
    assert await limits_of(gw, key) == KeyLimits(max_images_per_job=1, max_running=4, weight=5)
    page = await admin.get(f"/api-keys/{key.key.key_id}/limits")
    assert (value_of(page, "max_images_per_job"), value_of(page, "max_waiting"), value_of(page, "weight")) == (
        "1",
        "",
        "5",
    )
    # The gateway reads the key's limits on each request: the very next one meets the new limit.
    headers = {"Authorization": f"Bearer {key.secret}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=30) as api:
        refused = await api.post("/api/v1/generations", json={"prompt": "two owls", "count": 2})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["details"] == {"limit": "max_images_per_job", "max": 1}


async def test_an_unknown_key_has_no_limits_to_edit(gw: GatewayHub, admin: Admin) -> None:
    page = await admin.get("/api-keys/key_0000000000000000/limits")
    assert "There is no API key key_0000000000000000" in page
    form = {"max_waiting": "2", "max_images_per_job": "", "max_running": ""}
    refused = await admin.post("/api-keys/key_0000000000000000/limits", form, from_page="/api-keys")
    assert "no API key `key_0000000000000000`" in refused.text


async def test_new_keys_start_from_the_defaults_the_admin_set(gw: GatewayHub, admin: Admin, no_defaults: None) -> None:
    form = {"max_waiting": "20", "max_images_per_job": "4", "max_running": "", "weight": "2"}
    saved = await admin.post("/api-keys/defaults", form, from_page="/api-keys/defaults")
    assert saved.status_code in (302, 303), saved.text[:300]
    assert "Saved the limits new keys start with" in await admin.get("/api-keys")
    # The new key form starts from them ...
    listing = await admin.get("/api-keys")
    assert (value_of(listing, "max_waiting"), value_of(listing, "max_images_per_job")) == ("20", "4")
    assert (value_of(listing, "max_running"), value_of(listing, "weight")) == ("", "2")
    # ... the admin may change them for this key ...
    created = await admin.post(
        "/api-keys",
        {"name": "from-defaults", "max_waiting": "20", "max_images_per_job": "2", "max_running": "", "weight": "2"},
        from_page="/api-keys",
    )
    assert created.status_code in (302, 303), created.text[:300]
    # ... and a key made without naming limits (over NATS, not through the form) gets them as they are.
    bare = await new_key(gw, "bare")
    assert bare.key.limits == KeyLimits(max_waiting=20, max_images_per_job=4, weight=2)
    from contracts.messages.keys import ListApiKeys

    listing_reply = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
    assert [k.limits for k in listing_reply.keys if k.name == "from-defaults"] == [
        KeyLimits(max_waiting=20, max_images_per_job=2, weight=2)
    ]
    # The defaults are stored: a restarted gateway still has them.
    gateway = gw.hub.processes["gateway"]
    gateway.kill()
    await gateway.wait_exit()
    restarted = gw.hub.start("gateway", **gateway.env)
    await restarted.wait_healthy(gw.nc)
    defaults = await call(gw.nc, endpoints.Gateway.KEYS_DEFAULTS_GET, GetKeyDefaults())
    assert defaults.limits == KeyLimits(max_waiting=20, max_images_per_job=4, weight=2)
    assert defaults.updated_at is not None


async def test_a_retry_after_the_admin_changed_the_limits_gets_the_first_job(gw: GatewayHub, admin: Admin) -> None:
    """The limits an admin sets between a submission and its retry do not make the retry a different request."""
    key = await new_key(gw, "retries", KeyLimits())
    headers = {"Authorization": f"Bearer {key.secret}", "Idempotency-Key": str(uuid.uuid4())}
    body = {"prompt": "a kite over dunes"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=30) as api:
        first = await api.post("/api/v1/generations", json=body)
        assert first.status_code == 202, first.text
        form = {"max_waiting": "50", "max_images_per_job": "", "max_running": "3"}
        await admin.post(f"/api-keys/{key.key.key_id}/limits", form, from_page="/api-keys")
        assert await limits_of(gw, key) == KeyLimits(max_waiting=50, max_running=3)
        again = await api.post("/api/v1/generations", json=body)
    assert (again.status_code, again.json().get("job_id")) == (202, first.json()["job_id"]), again.text
