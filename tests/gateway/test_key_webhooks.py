"""Webhook URLs of an API key, set on the admin UI's API keys page: every job of the key is POSTed to each URL (its
progress steps too when asked), signed with the key's secret, from the gateway's durable consumer: a receiver that
fails the final state gets it again after the gateway was killed, the one that took it does not get it twice. The
receivers are plain HTTP servers in this process on loopback, allowed by HUB_INPUT_URL_ALLOW."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape

import httpx
import msgspec
import pytest
from gateway_support import GatewayHub, gateway_fixture
from metrics_support import scrape, value
from ui_support import ADMIN_PASSWORD, Admin, signed_in_admin
from webhook_support import Received, Receiver, expected_signature, serving

from contracts import endpoints
from contracts.messages.keys import CreateApiKey, CreatedApiKey, ListApiKeys
from contracts.runtime.bus import call
from hub_deploy.natsserver import free_port

pytestmark = pytest.mark.slow

COMPLETED = "generation.completed"


@dataclass
class Hook(Receiver):
    """A receiver that answers 503 to the first `refuse_final` POSTs of a final state, 200 to everything else."""

    refuse_final: int = 0

    def status_for(self, body: bytes) -> int:
        if msgspec.json.decode(body)["type"] == COMPLETED and self.refuse_final > 0:
            self.refuse_final -= 1
            return 503
        return 200

    def finals(self) -> list[Received]:
        return [got for got in self.got if msgspec.json.decode(got.body)["type"] == COMPLETED]

    def counted(self) -> list[Received]:
        return self.finals()


def hooked(refuse_final: int = 0) -> contextlib.AbstractAsyncContextManager[Hook]:
    return serving(Hook(refuse_final=refuse_final))


gw = gateway_fixture("key-webhooks", HUB_INPUT_URL_ALLOW="127.0.0.1")


@pytest.fixture(scope="module")
async def admin(gw: GatewayHub) -> AsyncIterator[Admin]:
    port = free_port()
    ui = gw.hub.start("ui", HUB_UI_PORT=str(port), HUB_ADMIN_PASSWORD=ADMIN_PASSWORD)
    await ui.wait_healthy(gw.nc)
    async with signed_in_admin(f"http://127.0.0.1:{port}") as signed_in:
        yield signed_in


async def set_webhooks(admin: Admin, key: CreatedApiKey, urls: list[str], *, progress: bool) -> str:
    """The API keys page's form, as the admin submits it; the page shown after it."""
    form = {"key_id": key.key.key_id, "webhook_urls": "\n".join(urls)} | ({"webhook_progress": "1"} if progress else {})
    saved = await admin.post("/api-keys/webhooks", form, from_page="/api-keys")
    assert saved.status_code in (302, 303), saved.text[:500]
    return await admin.get("/api-keys")


def check_signed(key: CreatedApiKey, hook: Hook) -> None:
    for got in hook.got:
        assert got.headers["webhook-signature"] == expected_signature(key.webhook_secret, got)


def check_in_order(hook: Hook, job_id: str) -> None:
    """Each step once, in order, every progress step before the final state."""
    bodies = [msgspec.json.decode(got.body) for got in hook.got]
    assert {body["job_id"] for body in bodies} == {job_id}
    kinds = [body["type"] for body in bodies]
    final_at = kinds.index(COMPLETED)
    assert set(kinds[:final_at]) <= {"generation.progress"} and set(kinds[final_at:]) == {COMPLETED}, kinds
    seqs = [int(got.headers["webhook-id"].rsplit(":", 1)[1]) for got in hook.got if got not in hook.finals()[1:]]
    assert seqs == sorted(set(seqs)), seqs


async def test_every_job_of_the_key_is_delivered_to_each_url_across_a_gateway_restart(
    gw: GatewayHub, admin: Admin
) -> None:
    key = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="gallery"))
    async with hooked(refuse_final=1) as failing, hooked() as steady:
        page = await set_webhooks(admin, key, [failing.url, steady.url], progress=True)
        form = re.search(
            rf'<textarea name="webhook_urls" id="f-webhook-urls-{key.key.key_id}"[^>]*>(.*?)</textarea>', page, re.S
        )
        assert form is not None and unescape(form.group(1)).split() == [failing.url, steady.url]

        auth = {"Authorization": f"Bearer {key.secret}"}
        async with httpx.AsyncClient(base_url=gw.base_url, headers=auth, timeout=30) as api:
            submitted = await api.post("/api/v1/generations", json={"prompt": "a harbour", "steps": 20})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            await failing.wait_for(1, timeout_s=60)  # answered 503
            await asyncio.sleep(0.5)  # the gateway records the attempt and asks JetStream for a later re-delivery
            _, figures = await scrape(gw.base_url)  # both attempts counted, by how they went
            assert value(figures, "genimage_gateway_webhook_deliveries_total", source="key", outcome="retrying") == 1
            assert value(figures, "genimage_gateway_webhook_deliveries_total", source="key", outcome="delivered") == 1
            gateway = gw.hub.processes["gateway"]
            gateway.kill()  # kill -9: the retry must come from JetStream, not from the dead process's memory
            await gateway.wait_exit()
            restarted = gw.hub.start("gateway", **gateway.env)
            await restarted.wait_healthy(gw.nc)
            await failing.wait_for(2, timeout_s=60)

            deadline = time.monotonic() + 10
            while True:
                deliveries = (await api.get(f"/api/v1/generations/{job_id}")).json()["webhooks"]
                if len(deliveries) == 2 and all(d["delivered_at"] for d in deliveries):
                    break
                assert time.monotonic() < deadline, deliveries
                await asyncio.sleep(0.1)

    first, second = failing.finals()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # receivers de-duplicate on it
    assert second.at - first.at >= 1.0  # the first back-off delay
    assert len(steady.finals()) == 1  # delivered once: the retry after the restart went only where it failed
    for hook in (failing, steady):
        check_signed(key, hook)
        check_in_order(hook, job_id)
        assert len(hook.got) > len(hook.finals()), "no progress step was sent"  # the key asked for them
    shown = {(d["url"], d["source"], d["attempts"], d["last_status"]) for d in deliveries}
    assert shown == {(failing.url, "key", 2, 200), (steady.url, "key", 1, 200)}

    # Another job of the key, with its own callback naming one of the key's URLs: that URL gets it once.
    async with hooked() as again, httpx.AsyncClient(base_url=gw.base_url, headers=auth, timeout=30) as api:
        await set_webhooks(admin, key, [again.url], progress=False)
        asked = {"prompt": "a quay", "callback_url": again.url}
        job_id = (await api.post("/api/v1/generations", json=asked)).json()["job_id"]
        await again.wait_for(1, timeout_s=60)
        await asyncio.sleep(1.0)  # nothing more comes
    assert [msgspec.json.decode(got.body)["type"] for got in again.got] == [COMPLETED]  # no progress: not asked
    check_signed(key, again)

    # The admin UI's job page lists each delivery.
    job_page = await admin.get(f"/jobs/{submitted.json()['job_id']}")
    lines = [
        unescape(re.sub(r"<[^>]+>", "", found))
        for found in re.findall(r'<p class="small job-webhook"[^>]*>(.*?)</p>', job_page)
    ]
    assert len(lines) == 2 and all(
        line.startswith("Webhook of its key to ") and "delivered" in line for line in lines
    ), lines


async def test_a_key_url_to_the_hubs_own_network_is_refused_naming_the_field(gw: GatewayHub, admin: Admin) -> None:
    key = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="refused-hook"))
    page = await set_webhooks(admin, key, ["http://10.1.2.3/hook"], progress=False)
    assert "urls" in page and "private address" in page and "HUB_INPUT_URL_ALLOW" in page, page
    keys = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
    (stored,) = [k for k in keys.keys if k.key_id == key.key.key_id]
    assert stored.webhook_urls == []  # nothing half-saved


async def test_a_key_made_before_webhooks_gets_its_signing_secret_once_when_its_urls_are_set(
    gw: GatewayHub, admin: Admin
) -> None:
    key = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="older"))
    # As a key made before webhooks existed is stored: without a signing secret.
    with sqlite3.connect(gw.hub.data_dir / "gateway.sqlite3") as db:
        db.execute("UPDATE api_key SET webhook_secret = '' WHERE key_id = ?", (key.key.key_id,))
    async with hooked() as hook:
        page = await set_webhooks(admin, key, [hook.url], progress=False)
        shown = re.search(r'<div class="flash" id="new-key-webhook-secret">.*?<pre>(whsec_[^<]+)</pre>', page, re.S)
        assert shown is not None, page
        assert "new-key-webhook-secret" not in await admin.get("/api-keys")  # shown once
        auth = {"Authorization": f"Bearer {key.secret}"}
        async with httpx.AsyncClient(base_url=gw.base_url, headers=auth, timeout=30) as api:
            submitted = await api.post("/api/v1/generations", json={"prompt": "a ferry"})
            assert submitted.status_code == 202, submitted.text
        await hook.wait_for(1, timeout_s=60)
    check_signed(msgspec.structs.replace(key, webhook_secret=shown.group(1)), hook)
    # Setting them again keeps that secret (nothing new to show).
    assert "new-key-webhook-secret" not in await set_webhooks(admin, key, [hook.url], progress=True)
