"""The runtime's declarative fan-out subscriptions and durable JetStream consumers, against a real nats-server:
typed messages, every replica hears a topic, ack on success, redelivery after a failure or a `Retry`, undecodable
messages dropped, batches, and keep-alive for work longer than the ack wait."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts.runtime.bus import ensure_stream, publish
from contracts.runtime.config import load_settings
from contracts.runtime.consumers import LATE_ANSWER_S, Durable, DurableConsumer, DurableFamily, Retry, message_headers
from contracts.runtime.logs import get_logger
from contracts.runtime.service import ServiceRuntime
from contracts.streams import StreamSpec
from contracts.topics import Topic
from hub_deploy.natsserver import NatsServer


class Note(msgspec.Struct):
    text: str


@pytest.fixture
async def runtimes(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Callable[[], ServiceRuntime]]:
    started: list[ServiceRuntime] = []

    def make() -> ServiceRuntime:
        env = {"HUB_NATS_URL": nats_server.url, "HUB_DATA_DIR": str(tmp_path), "HUB_SHUTDOWN_TIMEOUT_S": "5"}
        runtime = ServiceRuntime(load_settings("echo", env), version="1.0.0", description="test consumers")
        started.append(runtime)
        return runtime

    yield make
    for runtime in started:
        await runtime.stop()


def a_stream() -> StreamSpec:
    name = f"TEST_{uuid.uuid4().hex[:8].upper()}"
    return StreamSpec(
        name=name,
        subjects=(f"test.{name.lower()}.>",),
        retention="limits",
        max_age_s=0,
        max_msgs=-1,
        max_bytes=-1,
        discard="old",
        duplicate_window_s=60,
        description="test stream",
    )


def durable_on(stream: StreamSpec, **overrides: object) -> Durable[Note]:
    settings: dict[str, object] = {
        "name": "test-consumer",
        "stream": stream,
        "message": Note,
        "description": "test",
        "what": "note",
        "doing": "reading notes",
        "ack_wait_s": 5.0,
        "max_ack_pending": 100,
        "batch": 10,
        "fetch_wait_s": 0.5,
        "nak_delay_s": 0.2,
        **overrides,
    }
    return Durable[Note](**settings)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.05)


async def settled(nc: NatsClient, durable: Durable[Note]) -> bool:
    info = await nc.jetstream().consumer_info(durable.stream.name, durable.name)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def until_settled(nc: NatsClient, durable: Durable[Note]) -> None:
    for _ in range(400):
        if await settled(nc, durable):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the consumer still has messages pending or unacknowledged")


async def test_a_topic_reaches_every_replica_as_a_typed_message(nc: NatsClient, runtimes) -> None:
    topic = Topic(f"test.topic.{uuid.uuid4().hex}", Note)
    heard: list[tuple[int, Note]] = []

    def hearing(replica: int) -> Callable[[Note], Awaitable[None]]:
        async def hear(note: Note) -> None:
            heard.append((replica, note))

        return hear

    for replica in (1, 2):
        runtime = runtimes()
        runtime.subscribe(topic, hearing(replica))
        await runtime.start()
    await publish(nc, topic, Note(text="hello"))
    await nc.publish(topic.subject, b"not json")  # dropped (logged), the subscription lives on
    await publish(nc, topic, Note(text="again"))
    await until(lambda: len(heard) == 4, "both replicas heard both notes")
    assert sorted(heard, key=lambda h: (h[0], h[1].text)) == [
        (1, Note("again")), (1, Note("hello")), (2, Note("again")), (2, Note("hello"))
    ]  # fmt: skip


async def test_a_durable_consumer_acks_what_was_handled_and_redelivers_what_failed(nc: NatsClient, runtimes) -> None:
    stream = a_stream()
    durable = durable_on(stream)
    seen: Counter[str] = Counter()

    async def handle(note: Note) -> Retry | None:
        seen[note.text] += 1
        if note.text == "fails once" and seen[note.text] == 1:
            raise RuntimeError("the database is away")
        if note.text == "later" and seen[note.text] == 1:
            return Retry(0.3)
        return None

    runtime = runtimes()
    runtime.consume(durable, handle)
    await runtime.start()
    js = nc.jetstream()
    subject = stream.subjects[0].removesuffix(">")
    for text in ("fine", "fails once", "later"):
        await js.publish(subject + "x", msgspec.json.encode(Note(text)))
    await js.publish(subject + "x", b"{not a note")
    await until(lambda: seen["fails once"] == 2 and seen["later"] == 2, "the failed and retried notes came back")
    await until_settled(nc, durable)
    assert seen == {"fine": 1, "fails once": 2, "later": 2}  # the undecodable one was dropped, not retried


async def test_a_batch_is_handled_at_once_and_redelivered_whole_when_it_fails(nc: NatsClient, runtimes) -> None:
    stream = a_stream()
    durable = durable_on(stream)
    batches: list[list[str]] = []

    async def record(notes: list[Note]) -> None:
        batches.append([n.text for n in notes])
        if len(batches) == 1:
            raise RuntimeError("the first commit fails")

    js = nc.jetstream()
    runtime = runtimes()
    runtime.consume_batches(durable, record)
    await runtime.start()
    subject = stream.subjects[0].removesuffix(">")
    for text in ("a", "b", "c"):
        await js.publish(subject + "x", msgspec.json.encode(Note(text)))
    await until(lambda: sum(len(b) for b in batches[1:]) >= 3, "the failed batch came back")
    await until_settled(nc, durable)
    assert sorted(t for b in batches[1:] for t in b) == ["a", "b", "c"]


async def test_long_work_is_kept_alive_so_no_other_replica_gets_it(nc: NatsClient, runtimes) -> None:
    stream = a_stream()
    # Handling takes three times the ack wait: without the keep-alive the note would go to the other replica.
    durable = durable_on(stream, ack_wait_s=1.0, keep_alive_s=0.2, batch=1)
    handled: list[str] = []

    async def slow(note: Note) -> Retry | None:
        handled.append(note.text)
        await asyncio.sleep(3.0)
        return None

    for _ in range(2):
        runtime = runtimes()
        runtime.consume(durable, slow)
        await runtime.start()
    js = nc.jetstream()
    await js.publish(stream.subjects[0].removesuffix(">") + "x", msgspec.json.encode(Note("long")))
    await until(lambda: len(handled) >= 1, "the note was taken")
    await until_settled(nc, durable)
    assert handled == ["long"]


async def test_one_key_in_order_different_keys_at_once_with_their_headers(nc: NatsClient, runtimes) -> None:
    stream = a_stream()
    # The key is the subject's last token: a job's messages one after the other, other jobs meanwhile.
    durable = durable_on(stream, in_order_by=lambda subject: subject.rsplit(".", 1)[-1], context_key="job_id")
    log: list[tuple[str, str]] = []

    async def handle(note: Note) -> Retry | None:
        headers = message_headers() or {}
        log.append(("start", f"{note.text}:{headers.get('from', '')}"))
        if note.text == "a1":
            await asyncio.sleep(1.0)
        log.append(("end", note.text))
        return None

    runtime = runtimes()
    runtime.consume(durable, handle)
    js = nc.jetstream()
    await ensure_stream(js, stream, replicas=1)
    prefix = stream.subjects[0].removesuffix(">")
    for text in ("a1", "a2", "b1"):  # stored before the consumer starts: one batch holds all three
        await js.publish(prefix + text[0], msgspec.json.encode(Note(text)), headers={"from": f"sender-{text}"})
    await runtime.start()
    await until(lambda: ("end", "a2") in log and ("end", "b1") in log, "every note handled")
    assert log.index(("start", "a2:sender-a2")) > log.index(("end", "a1"))  # a's second waited for its first
    assert log.index(("end", "b1")) < log.index(("end", "a1"))  # b did not wait for a


async def test_a_family_takes_from_the_chosen_key_and_its_handler_owns_the_ack(nc: NatsClient) -> None:
    """One durable per key from a template (fair share's per-key consumers): a message is taken from the first
    named key that has one; the handler acks it when its work ends (later), one it failed on comes back, and one
    never acknowledged (its replica died) comes back after the ack wait."""
    stream = a_stream()
    js = nc.jetstream()
    await ensure_stream(js, stream, replicas=1)
    prefix = stream.subjects[0].removesuffix(">")

    def durable_of(key: str) -> Durable[Note]:
        return durable_on(
            stream, name=f"family-{key}", filter_subject=f"{prefix}{key}.*", ack_wait_s=2.0, fetch_wait_s=0.2
        )

    family = DurableFamily(durable_of, lambda: js, 1, get_logger("test"), lambda: nc)
    for key, text in (("a", "first of a"), ("b", "first of b"), ("b", "second of b")):
        await js.publish(f"{prefix}{key}.x", msgspec.json.encode(Note(text)))
    owned: list[Msg] = []
    failed_once: list[str] = []

    async def own(msg: Msg) -> None:
        text = msgspec.json.decode(msg.data, type=Note).text
        if text == "second of b" and not failed_once:
            failed_once.append(text)
            raise RuntimeError("no room for it")
        owned.append(msg)

    assert await family.take(["c", "b", "a"], own)  # "c" has none: the next named key gives one
    assert await family.take(["b"], own)  # fails: nakked, delivered again after nak_delay_s
    await asyncio.sleep(0.5)
    assert await family.take(["b"], own)
    assert not await family.take(["b"], own)  # b's two are owned now, not acknowledged: not given again
    assert [msgspec.json.decode(m.data, type=Note).text for m in owned] == ["first of b", "second of b"]
    for msg in owned:
        await msg.ack()  # the work ended
    assert await family.take(["a"], own)  # owned, never acknowledged
    await asyncio.sleep(2.5)  # past ack_wait_s
    assert not await family.take(["b"], own)  # acknowledged: gone
    assert await family.take(["a"], own)  # not acknowledged: delivered again
    assert [msgspec.json.decode(m.data, type=Note).text for m in owned[2:]] == ["first of a", "first of a"]
    info = await js.consumer_info(stream.name, "family-a")
    assert info.config.filter_subject == f"{prefix}a.*"


async def test_a_message_whose_handler_is_cancelled_before_it_returns_is_handed_back_at_once(nc: NatsClient) -> None:
    """A graceful stop cancels the fetch loop; a message taken but not yet owned (the handler had not returned) goes
    back at once, for the next start or another replica, not after the ack wait (the take-over time: 30 s)."""
    stream = a_stream()
    js = nc.jetstream()
    await ensure_stream(js, stream, replicas=1)
    prefix = stream.subjects[0].removesuffix(">")
    durable = durable_on(stream, name="stopping", filter_subject=f"{prefix}k.*", ack_wait_s=30.0, fetch_wait_s=0.2)
    family = DurableFamily(lambda _key: durable, lambda: js, 1, get_logger("test"), lambda: nc)
    await js.publish(f"{prefix}k.x", msgspec.json.encode(Note("taken while stopping")))
    handling = asyncio.Event()

    async def never_returns(_msg: Msg) -> None:
        handling.set()
        await asyncio.Event().wait()

    taking = asyncio.ensure_future(family.take(["k"], never_returns))
    await asyncio.wait_for(handling.wait(), 10)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    owned: list[Msg] = []

    async def own(msg: Msg) -> None:
        owned.append(msg)

    assert await family.take(["k"], own)
    assert msgspec.json.decode(owned[0].data, type=Note).text == "taken while stopping"
    await owned[0].ack()


async def test_a_family_fetch_of_a_key_with_nothing_to_give_ends_at_the_servers_answer(nc: NatsClient) -> None:
    """The server answers a pull request "408" at its expiry (fetch_wait_s): the fetch ends then, not LATE_ANSWER_S
    later (nats-py's private _fetch_one ignored the 408: 1.1 s per empty key in the dispatcher instead of 0.1 s)."""
    stream = a_stream()
    js = nc.jetstream()
    await ensure_stream(js, stream, replicas=1)
    family = DurableFamily(lambda _key: durable_on(stream, fetch_wait_s=0.3), lambda: js, 1, get_logger("test"),
                           lambda: nc)  # fmt: skip
    await family.open(None)
    asked = time.monotonic()
    assert not await family.take([None], lambda _msg: asyncio.sleep(0))
    assert time.monotonic() - asked < 0.3 + LATE_ANSWER_S / 2, time.monotonic() - asked


async def test_a_pull_requests_message_that_comes_after_its_expiry_is_still_taken(nc: NatsClient) -> None:
    """A message sent just before a pull request expires reaches a busy client after the expiry: it is waited for
    LATE_ANSWER_S (else it was held by nobody that knew it until ack_wait). A plain responder stands in for the
    server here: it first ends an earlier request (a "408" that must not end this one), then answers 0.6 s after a
    request that expires at 0.1 s."""
    stream = a_stream()  # no consumer on the server: the responder is the only one answering
    consumer = DurableConsumer(durable_on(stream, fetch_wait_s=0.1), nc.jetstream, 1, get_logger("test"),
                               nc_of=lambda: nc)  # fmt: skip
    requests: list[bytes] = []

    async def answer_late(request: Msg) -> None:
        requests.append(request.data)
        earlier = request.reply.rsplit(".", 1)[0] + ".0"
        await nc.publish(earlier, b"", headers={"Status": "408", "Description": "Request Timeout"})
        await asyncio.sleep(0.6)
        await nc.publish(request.reply, msgspec.json.encode(Note("late")))

    responder = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream.name}.test-consumer", cb=answer_late)
    try:
        msg = await consumer._pull_one()
        assert msg is not None and msgspec.json.decode(msg.data, type=Note).text == "late"
        assert [msgspec.json.decode(r) for r in requests] == [{"batch": 1, "expires": 100_000_000}]
    finally:
        await responder.unsubscribe()
