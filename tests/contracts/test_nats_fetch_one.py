"""Guard: DurableConsumer.fetch_one calls nats-py's private `PullSubscription._fetch_one(expires_ns, timeout_s)`,
relying on it to send one pull request that the server holds `expires`, and to wait for its answer until
`timeout`, past the expiry: a message the server sends just before the expiry then reaches this fetch instead of
the next one (see LATE_ANSWER_S). Should a nats-py upgrade change that, these fail and say what changed, before a
dispatcher killed at the wrong moment leaves a job to the take-over time.

Measured here (nats-py 2.x): the server's "408 Request Timeout" at the expiry does not end the wait (nats-py
raises its TimeoutError inside the loop that catches it), so a fetch of a consumer with nothing to deliver lasts
the whole `timeout`, fetch_wait_s + LATE_ANSWER_S, not fetch_wait_s."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import FetchTimeoutError

FETCH_ONE = JetStreamContext.PullSubscription._fetch_one


def test_the_private_fetch_one_takes_expiry_in_nanoseconds_then_a_timeout_in_seconds() -> None:
    names = list(inspect.signature(FETCH_ONE).parameters)
    assert names[:3] == ["self", "expires", "timeout"], (
        f"nats-py changed PullSubscription._fetch_one's parameters to {names}: update DurableConsumer.fetch_one "
        "(contracts/runtime/consumers.py), which passes (expiry in ns, timeout in s) by position"
    )
    assert inspect.iscoroutinefunction(FETCH_ONE)


async def test_the_private_fetch_one_returns_a_message_ackable_on_jetstream_or_times_out(nc: NatsClient) -> None:
    js = nc.jetstream()
    stream = f"GUARD_{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[f"{stream}.jobs"])
    try:
        await js.add_consumer(stream, ConsumerConfig(durable_name="guard", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
        sub = await js.pull_subscribe_bind(durable="guard", stream=stream)
        asked = time.monotonic()
        with pytest.raises((FetchTimeoutError, TimeoutError, nats.errors.TimeoutError)):
            await sub._fetch_one(int(0.2 * 1e9), 0.7)
        # Nothing to deliver: it ends at its timeout (0.7 s), the server's 408 at the expiry (0.2 s) notwithstanding.
        assert 0.6 < time.monotonic() - asked < 2.0, time.monotonic() - asked

        await js.publish(f"{stream}.jobs", b"one")
        msg = await sub._fetch_one(int(0.2 * 1e9), 0.7)
        assert msg.data == b"one" and msg.metadata.sequence.stream == 1
        await msg.ack_sync()
        assert (await js.consumer_info(stream, "guard")).num_ack_pending == 0
    finally:
        await js.delete_stream(stream)


async def test_the_private_fetch_one_waits_for_an_answer_past_the_expiry_until_its_timeout(nc: NatsClient) -> None:
    """The answer to a pull request that comes after its expiry (a busy loop, a server answering just before it)
    is still returned: what LATE_ANSWER_S is for. The server here is a plain responder under a JetStream API
    prefix of its own, answering 0.6 s after a request that expires at 0.1 s."""
    prefix = f"guard{uuid.uuid4().hex[:8]}.api"
    requests: list[dict[str, object]] = []

    async def answer_late(request: Msg) -> None:
        requests.append(json.loads(request.data))
        await asyncio.sleep(0.6)
        await nc.publish(request.reply, b"late")

    responder = await nc.subscribe(f"{prefix}.CONSUMER.MSG.NEXT.S.C", cb=answer_late)
    try:
        sub = await nc.jetstream(prefix=prefix).pull_subscribe_bind(durable="C", stream="S")
        msg = await sub._fetch_one(int(0.1 * 1e9), 2.0)
        assert msg.data == b"late", "_fetch_one no longer waits past the expiry for the request's answer"
        assert requests == [{"batch": 1, "expires": 100_000_000}]
    finally:
        await responder.unsubscribe()
