"""Webhooks: a job's final state POSTed to its callback_url, signed with the key's webhook secret, retried from the
gateway's durable consumer, across a restart of the gateway. The receiver is a plain HTTP server in this process on
loopback, allowed by HUB_INPUT_URL_ALLOW (the same rule as input image URLs)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from html import unescape

import httpx
import msgspec
import pytest
from gateway_support import GatewayHub, gateway_fixture
from harness import polled
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError
from ui_support import ADMIN_PASSWORD, signed_in_admin
from webhook_support import Receiver, expected_signature, receiving

from contracts.streams import EVENTS_STREAM, webhook_event_subject
from gateway.webhooks import CONSUMER_NAME, FORMER_CONSUMER_NAME
from hub_deploy.natsserver import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving([503]) as hook:  # the first attempt fails
        yield hook


gw = gateway_fixture("webhooks", HUB_INPUT_URL_ALLOW="127.0.0.1")


async def test_final_state_is_signed_and_retried_across_a_gateway_restart(gw: GatewayHub, receiver: Receiver) -> None:
    callback = f"http://127.0.0.1:{receiver.port}/hook"
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        submitted = await api.post("/api/v1/generations", json={"prompt": "a lighthouse", "callback_url": callback})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await receiver.wait_for(1, timeout_s=60)  # the first attempt, answered 503
        await asyncio.sleep(0.5)  # the gateway records the attempt and asks JetStream for a later re-delivery
        gateway = gw.hub.processes["gateway"]
        gateway.kill()  # kill -9: the retry must come from JetStream, not from the dead process's memory
        await gateway.wait_exit()
        restarted = gw.hub.start("gateway", **gateway.env)
        await restarted.wait_healthy(gw.nc)
        consumer = await gw.nc.jetstream().consumer_info("HUB_EVENTS", CONSUMER_NAME)
        # Retries wait un-acknowledged: the server's default of 1000 would let a long outage stall every webhook.
        assert consumer.config.max_ack_pending >= 10_000, consumer.config
        await receiver.wait_for(2, timeout_s=60)

        first, second = receiver.got
        assert first.headers["webhook-id"] == second.headers["webhook-id"]  # receivers de-duplicate on it
        assert second.at - first.at >= 1.0  # the first back-off delay
        assert int(first.headers["webhook-timestamp"]) <= int(second.headers["webhook-timestamp"])
        for got in (first, second):
            assert got.headers["webhook-signature"] == expected_signature(gw.key.webhook_secret, got)
            assert got.headers["content-type"] == "application/json"
        body = msgspec.json.decode(second.body)
        assert (body["type"], body["job_id"], body["data"]["kind"]) == ("generation.completed", job_id, "completed")
        assert body["data"]["outputs"]

        deadline = time.monotonic() + 10
        while (deliveries := (await api.get(f"/api/v1/generations/{job_id}")).json()["webhooks"])[0][
            "delivered_at"
        ] is None:
            assert time.monotonic() < deadline, deliveries
            await asyncio.sleep(0.1)
        (delivery,) = deliveries
        assert (delivery["url"], delivery["source"], delivery["attempts"], delivery["last_status"]) == (
            callback,
            "callback",
            2,
            200,
        )

    # The admin UI's job page shows the same, asked from the gateway over NATS.
    ui_port = free_port()
    ui = gw.hub.start("ui", HUB_UI_PORT=str(ui_port), HUB_ADMIN_PASSWORD=ADMIN_PASSWORD)
    await ui.wait_healthy(gw.nc)
    async with signed_in_admin(f"http://127.0.0.1:{ui_port}") as admin:
        shown = re.search(
            r'<p class="small job-webhook" id="job-webhook-1">(.*?)</p>', await admin.get(f"/jobs/{job_id}")
        )
    assert shown is not None
    text = unescape(re.sub(r"<[^>]+>", "", shown.group(1)))
    assert text.startswith(f"Webhook to {callback}: delivered ") and "2 attempts, last HTTP 200" in text, text


async def test_a_callback_to_the_hubs_own_network_is_refused_at_submit(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        refused = await api.post("/api/v1/generations", json={"prompt": "x", "callback_url": "http://10.1.2.3/hook"})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["field"] == "callback_url"
    assert "private address" in error["message"] and "HUB_INPUT_URL_ALLOW" in error["message"]


async def test_progress_steps_come_in_order_before_the_final_state(gw: GatewayHub) -> None:
    async with receiving([]) as hook, httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        callback = f"http://127.0.0.1:{hook.port}/progress"
        asked = {"prompt": "a tide pool", "steps": 20, "callback_url": callback, "callback_progress": True}
        submitted = await api.post("/api/v1/generations", json=asked)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        deadline = time.monotonic() + 60
        while not hook.got or msgspec.json.decode(hook.got[-1].body)["type"] != "generation.completed":
            await hook.wait_for(len(hook.got) + 1, timeout_s=max(0.1, deadline - time.monotonic()))
    bodies = [msgspec.json.decode(got.body) for got in hook.got]
    assert {body["job_id"] for body in bodies} == {job_id}
    assert [body["type"] for body in bodies[:-1]] == ["generation.progress"] * (len(bodies) - 1)
    assert len(bodies) >= 2, bodies  # at least one step (the first within 0.4 s of the start) and the result
    seqs = [int(got.headers["webhook-id"].rsplit(":", 1)[1]) for got in hook.got]
    assert seqs == sorted(set(seqs)), seqs  # in order, each once
    percents = [body["data"]["percent"] for body in bodies[:-1]]
    assert percents == sorted(percents), percents
    for got in hook.got:
        assert got.headers["webhook-signature"] == expected_signature(gw.key.webhook_secret, got)


async def test_only_the_jobs_with_webhooks_reach_the_webhook_consumer(gw: GatewayHub) -> None:
    """The dispatcher copies the events webhooks need of a job with a callback (or a key with webhook URLs) for the
    gateway's consumer, which reads those copies only: a job without webhooks costs it no delivery and no ack."""
    js = gw.nc.jetstream()
    async with receiving([]) as hook, httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        plain = await finished_job(api, {"prompt": "a quiet harbour"})
        hooked = await finished_job(api, {"prompt": "a busy harbour", "callback_url": f"http://127.0.0.1:{hook.port}/"})
        await hook.wait_for(1, timeout_s=60)
    with pytest.raises(NotFoundError):  # the plain job has no copy
        await js.get_msg(EVENTS_STREAM, subject=webhook_event_subject(plain), seq=1, next=True)
    copies = []
    seq = 1
    while True:
        try:
            stored = await js.get_msg(EVENTS_STREAM, subject=webhook_event_subject(hooked), seq=seq, next=True)
        except NotFoundError:
            break
        copies.append(msgspec.json.decode(stored.data or b"")["kind"])
        seq = stored.seq + 1
    assert copies[0] == "accepted" and copies[-1] == "completed", copies
    assert set(copies) <= {"accepted", "progress", "completed"}, copies
    consumer = await js.consumer_info(EVENTS_STREAM, CONSUMER_NAME)
    assert consumer.config.filter_subject == "hub.events.webhook.>", consumer.config
    assert consumer.delivered.consumer_seq >= len(copies)


async def test_the_former_consumer_of_every_event_is_removed_at_start(gw: GatewayHub) -> None:
    """A hub upgraded from before the copies has a durable consumer of every event nobody reads any more."""
    js = gw.nc.jetstream()
    former = ConsumerConfig(durable_name=FORMER_CONSUMER_NAME, ack_policy=AckPolicy.EXPLICIT)
    await js.add_consumer(EVENTS_STREAM, former)
    gateway = gw.hub.processes["gateway"]
    gateway.kill()
    await gateway.wait_exit()
    restarted = gw.hub.start("gateway", **gateway.env)
    await restarted.wait_healthy(gw.nc)
    with pytest.raises(NotFoundError):
        await js.consumer_info(EVENTS_STREAM, FORMER_CONSUMER_NAME)


async def finished_job(api: httpx.AsyncClient, body: dict[str, object]) -> str:
    submitted = await api.post("/api/v1/generations", json=body)
    assert submitted.status_code == 202, submitted.text
    job_id: str = submitted.json()["job_id"]
    await polled(
        lambda: api.get(f"/api/v1/generations/{job_id}"),
        lambda answer: answer.json()["status"] == "completed",
        within_s=60,
    )
    return job_id
