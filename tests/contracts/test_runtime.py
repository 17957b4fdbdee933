"""The shared service runtime against a real nats-server: envelopes, queue groups, concurrency, drain."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy, StorageType

from contracts import endpoints, subjects
from contracts.endpoints import Endpoint
from contracts.envelope import Reply
from contracts.errors import ErrorCode, HubError
from contracts.messages.base import Record, Request
from contracts.messages.health import HealthRequest
from contracts.runtime.bus import call, ensure_stream, request
from contracts.runtime.config import load_settings
from contracts.runtime.service import ServiceRuntime
from contracts.streams import EVENTS
from hub_deploy.natsserver import NatsServer


class Say(Request):
    text: str
    times: int = 1


class Said(Record):
    text: str
    replica: str


ECHO = Endpoint("hub.echo.say", Say, Said)
SLOW = Endpoint("hub.echo.slow", Say, Said)
BROKEN = Endpoint("hub.echo.broken", Say, Said)


def make_echo(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], ServiceRuntime]:
    def build() -> ServiceRuntime:
        env = {
            "HUB_NATS_URL": nats_url,
            "HUB_DATA_DIR": str(tmp_path_factory.mktemp("echo")),
            "HUB_SHUTDOWN_TIMEOUT_S": "5",
        }
        runtime = ServiceRuntime(load_settings("echo", env), version="1.2.3", description="test echo service")

        async def say(req: Say) -> Said:
            if req.times > 3:
                raise HubError(ErrorCode.INVALID_REQUEST, "say it at most 3 times", field="times")
            return Said(text=" ".join([req.text] * req.times), replica=runtime.instance_id)

        async def slow(req: Say) -> Said:
            await asyncio.sleep(float(req.text))
            return Said(text=req.text, replica=runtime.instance_id)

        async def broken(_req: Say) -> Said:
            raise RuntimeError("secret internals that must not leak")

        runtime.endpoint(ECHO, say)
        runtime.endpoint(SLOW, slow)
        runtime.endpoint(BROKEN, broken)
        return runtime

    return build


@pytest.fixture
async def echo_factory(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Callable[[], ServiceRuntime]]:
    started: list[ServiceRuntime] = []
    build = make_echo(nats_server.url, tmp_path_factory)

    def factory() -> ServiceRuntime:
        runtime = build()
        started.append(runtime)
        return runtime

    yield factory
    for runtime in started:
        if runtime._nc is not None and not runtime._nc.is_closed:
            await runtime.stop()


async def raw_reply(nc: NatsClient, subject: str, data: bytes) -> dict:
    msg = await nc.request(subject, data, timeout=5)
    return msgspec.json.decode(msg.data)


async def test_a_request_gets_its_typed_result(nc: NatsClient, echo_factory) -> None:
    runtime = echo_factory()
    await runtime.start()
    said = await call(nc, ECHO, Say(text="hi", times=2))
    assert said == Said(text="hi hi", replica=runtime.instance_id)


async def test_bad_requests_get_the_error_envelope_naming_the_field(nc: NatsClient, echo_factory) -> None:
    await echo_factory().start()
    not_json = await raw_reply(nc, ECHO.subject, b"{not json")
    assert not_json["error"]["code"] == "invalid_request"
    assert "not valid JSON" in not_json["error"]["message"]

    wrong_type = await raw_reply(nc, ECHO.subject, b'{"text": "a", "times": "two"}')
    assert wrong_type["error"]["field"] == "times"
    assert "result" not in wrong_type

    typo = await raw_reply(nc, ECHO.subject, b'{"text": "a", "tims": 2}')
    assert typo["error"]["field"] == "tims"
    assert typo["error"]["details"]["accepted_fields"] == ["text", "times"]

    missing = await raw_reply(nc, ECHO.subject, b"{}")
    assert missing["error"] == {"code": "invalid_request", "message": "`text` is required", "field": "text"}


async def test_domain_errors_travel_unchanged_to_the_caller(nc: NatsClient, echo_factory) -> None:
    await echo_factory().start()
    with pytest.raises(HubError) as raised:
        await call(nc, ECHO, Say(text="a", times=4))
    assert raised.value.info.code is ErrorCode.INVALID_REQUEST
    assert raised.value.info.field == "times"
    msg = await nc.request(ECHO.subject, b'{"text": "a", "times": 4}', timeout=5)
    assert msg.headers is not None and msg.headers.get("Nats-Service-Error-Code") == "invalid_request"


async def test_a_crashing_handler_answers_an_internal_error_and_the_service_lives_on(
    nc: NatsClient, echo_factory
) -> None:
    await echo_factory().start()
    reply = msgspec.json.decode((await nc.request(BROKEN.subject, b'{"text": "x"}', timeout=5)).data, type=Reply[Said])
    assert reply.error is not None and reply.error.code is ErrorCode.INTERNAL
    assert reply.error.ref and reply.error.ref in reply.error.message
    assert "secret internals" not in reply.error.message and "Traceback" not in reply.error.message
    assert (await call(nc, ECHO, Say(text="still here"))).text == "still here"


async def test_replicas_share_requests_through_the_queue_group(nc: NatsClient, echo_factory) -> None:
    first, second = echo_factory(), echo_factory()
    await first.start()
    await second.start()
    answers = await asyncio.gather(*(call(nc, ECHO, Say(text=str(i))) for i in range(60)))
    replicas = {a.replica for a in answers}
    # Each request answered once, by either. Once under CI load all 60 came from one replica: the count per replica
    # and which one started last are told, to see whether the later subscription was not yet in effect.
    told = (Counter(a.replica for a in answers), "second:", second.instance_id)
    assert replicas == {first.instance_id, second.instance_id}, told
    assert sorted(int(a.text) for a in answers) == list(range(60))


async def test_a_slow_request_does_not_hold_up_the_next(nc: NatsClient, echo_factory) -> None:
    await echo_factory().start()
    slow = asyncio.ensure_future(call(nc, SLOW, Say(text="2.0")))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    await call(nc, ECHO, Say(text="quick"))
    assert asyncio.get_running_loop().time() - started < 1.0  # not held up by the 2 s request
    assert not slow.done()
    await slow


async def test_stop_finishes_requests_in_flight_then_takes_no_more(nc: NatsClient, echo_factory) -> None:
    runtime = echo_factory()
    await runtime.start()
    # Generous: a CI machine once took over 5 s here. Twice, only in full CI runs, the first request got
    # "no responders" although `start` had flushed its subscriptions (never reproduced locally, cause unknown);
    # what is tested is what follows, so such a request is sent again until the service takes one.
    deadline = asyncio.get_running_loop().time() + 20
    refused: list[str] = []
    in_flight = asyncio.ensure_future(call(nc, SLOW, Say(text="0.5"), timeout=30))
    while not runtime._in_flight:  # until the service is really handling it
        if in_flight.done():
            error = in_flight.exception()
            if not (isinstance(error, HubError) and error.code is ErrorCode.UNAVAILABLE):
                raise AssertionError(f"the request never reached the service: {error!r}")
            refused.append(str(error))
            in_flight = asyncio.ensure_future(call(nc, SLOW, Say(text="0.5"), timeout=30))
        assert asyncio.get_running_loop().time() < deadline, f"the service took no request within 20 s: {refused}"
        await asyncio.sleep(0.01)
    await runtime.stop()
    assert (await in_flight).text == "0.5"  # answered although the stop began while it ran
    with pytest.raises(HubError) as raised:
        await call(nc, ECHO, Say(text="late"), timeout=1)
    assert raised.value.code is ErrorCode.UNAVAILABLE


async def test_a_stop_during_start_ends_it_even_when_a_cancellation_is_lost(echo_factory) -> None:
    runtime = echo_factory()
    cancellations: list[str] = []

    async def slow_start_that_swallows_one_cancellation(_runtime: ServiceRuntime) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # as nats-py's first-connection loop may do
            cancellations.append("swallowed")
        await asyncio.sleep(60)

    runtime.on_startup(slow_start_that_swallows_one_cancellation)
    running = asyncio.ensure_future(runtime.run())
    await asyncio.sleep(0.3)
    runtime.request_stop()
    done, _ = await asyncio.wait({running}, timeout=5)
    assert running in done, "the stop request did not end the start"
    assert cancellations == ["swallowed"]


async def test_health_and_micro_discovery(nc: NatsClient, echo_factory) -> None:
    runtime = echo_factory()
    runtime.health_check("always_broken", _failing_check)
    await runtime.start()
    health = await call(nc, endpoints.health("echo"), HealthRequest())
    assert health.service == "echo" and health.version == "1.2.3"
    assert health.instance_id == runtime.instance_id
    checks = {c.name: c for c in health.checks}
    assert checks["nats"].ok
    assert not checks["always_broken"].ok and checks["always_broken"].detail == "disk on fire"
    assert health.ok is False

    ping = msgspec.json.decode((await nc.request("$SRV.PING.hub-echo", b"", timeout=2)).data)
    assert ping["name"] == "hub-echo" and ping["version"] == "1.2.3"
    info = msgspec.json.decode((await nc.request("$SRV.INFO.hub-echo", b"", timeout=2)).data)
    answered = {e["subject"] for e in info["endpoints"]}
    assert answered >= {ECHO.subject, SLOW.subject, BROKEN.subject, subjects.health("echo")}
    assert all(e["queue_group"] == "hub-echo" for e in info["endpoints"])
    # Each endpoint documents the message types it speaks (from its declaration).
    types = {e["subject"]: e["metadata"] for e in info["endpoints"]}
    assert types[ECHO.subject] == {"request": "Say", "reply": "Said"}
    assert types[subjects.health("echo")] == {"request": "HealthRequest", "reply": "HealthReply"}


async def test_micro_stats_report_the_time_and_errors_of_the_handlers(nc: NatsClient, echo_factory) -> None:
    await echo_factory().start()
    await call(nc, SLOW, Say(text="0.2"))
    with pytest.raises(HubError):
        await call(nc, ECHO, Say(text="a", times=4))
    await call(nc, ECHO, Say(text="a"))
    stats = msgspec.json.decode((await nc.request("$SRV.STATS.hub-echo", b"", timeout=2)).data)
    by_name = {e["name"]: e for e in stats["endpoints"]}
    slow, echo = by_name["slow"], by_name["say"]
    assert slow["num_requests"] == 1 and slow["num_errors"] == 0
    assert slow["processing_time"] >= 200_000_000  # the handler's 0.2 s, not the task spawn
    assert slow["average_processing_time"] == slow["processing_time"]
    assert echo["num_requests"] == 2 and echo["num_errors"] == 1
    assert echo["last_error"].startswith("invalid_request: say it at most 3 times")
    assert echo["data"] == {"answered": 2, "in_flight": 0}


async def _failing_check() -> str:
    raise RuntimeError("disk on fire")


async def test_request_helper_reports_no_responders_and_timeouts(nc: NatsClient) -> None:
    with pytest.raises(HubError) as raised:
        await request(nc, "hub.nobody.home", Say(text="x"), Said, timeout=1)
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert "nobody service" in raised.value.info.message

    async def never_answer(_msg) -> None:  # type: ignore[no-untyped-def]
        return None

    sub = await nc.subscribe("hub.silent.x", cb=never_answer)
    with pytest.raises(HubError) as raised:
        await request(nc, "hub.silent.x", Say(text="x"), Said, timeout=0.3)
    assert raised.value.code is ErrorCode.TIMEOUT
    await sub.unsubscribe()


async def test_an_idempotent_request_held_by_a_replica_that_died_is_asked_again_of_the_one_that_answers(
    nc: NatsClient,
) -> None:
    # A replica killed while it holds a request never answers: the caller asks again after ASK_AGAIN_S (then twice
    # as long) instead of waiting out the whole timeout; a request not declared idempotent is never asked twice.
    reads = Endpoint("hub.flaky.read", Say, Said, timeout_s=8, ask_again_s=0.3)
    writes = Endpoint("hub.flaky.write", Say, Said, timeout_s=1.5)
    received: Counter[str] = Counter()

    async def dies_holding_the_first(msg) -> None:  # type: ignore[no-untyped-def]
        received[msg.subject] += 1
        if received[msg.subject] > 1:  # the restarted replica answers
            await msg.respond(msgspec.json.encode(Reply(result=Said(text="again", replica="b"))))

    subs = [await nc.subscribe(e.subject, queue="q", cb=dies_holding_the_first) for e in (reads, writes)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await call(nc, reads, Say(text="x"))).text == "again"
    assert loop.time() - started < 2, "waited for the dead replica's answer"
    assert received[reads.subject] == 2

    with pytest.raises(HubError) as raised:
        await call(nc, writes, Say(text="x"))
    assert raised.value.code is ErrorCode.TIMEOUT and received[writes.subject] == 1
    received.clear()
    with pytest.raises(HubError):  # the caller may say this one request is not to be asked twice
        await call(nc, reads, Say(text="x"), timeout=1, ask_again=False)
    assert received[reads.subject] == 1
    for sub in subs:
        await sub.unsubscribe()


async def test_a_request_held_by_a_dead_replica_is_answered_soon_after_the_service_is_back(nc: NatsClient) -> None:
    # The replica dies holding the request and its restart takes 2 s: the asks meanwhile find nobody listening, so the
    # next goes out NOBODY_PAUSE_S later (not after the doubled wait, at 3.5 s).
    reads = Endpoint("hub.restarting.read", Say, Said, timeout_s=8, ask_again_s=0.5)

    async def holds_it(_msg) -> None:  # type: ignore[no-untyped-def]
        await held.unsubscribe()  # and dies

    async def answers(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msgspec.json.encode(Reply(result=Said(text="back", replica="b"))))

    async def restart_after(delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await nc.subscribe(reads.subject, cb=answers)

    held = await nc.subscribe(reads.subject, cb=holds_it)
    loop = asyncio.get_running_loop()
    started = loop.time()
    restart = asyncio.ensure_future(restart_after(2.0))
    assert (await call(nc, reads, Say(text="x"))).text == "back"
    assert loop.time() - started < 2.8
    await restart


async def test_a_request_asked_again_takes_the_first_answer_and_still_reports_nobody_listening(
    nc: NatsClient,
) -> None:
    reads = Endpoint("hub.slow.read", Say, Said, timeout_s=5, ask_again_s=0.2)
    answered: list[str] = []

    async def slow_first(msg) -> None:  # type: ignore[no-untyped-def]
        answered.append("asked")
        if len(answered) == 1:  # the first ask is slow but alive: its answer is taken, whichever comes first
            await asyncio.sleep(0.5)
        await msg.respond(msgspec.json.encode(Reply(result=Said(text=f"answer {len(answered)}", replica="a"))))

    tasks: list[asyncio.Task[None]] = []

    async def each_in_a_task(msg) -> None:  # type: ignore[no-untyped-def]
        tasks.append(asyncio.create_task(slow_first(msg)))

    sub = await nc.subscribe(reads.subject, cb=each_in_a_task)
    said = await call(nc, reads, Say(text="x"))
    assert said.text.startswith("answer") and len(answered) >= 2
    await sub.unsubscribe()
    with pytest.raises(HubError) as raised:  # nobody at all: reported at once, as without asking again
        await call(nc, Endpoint("hub.nobody.read", Say, Said, ask_again_s=0.2), Say(text="x"))
    assert raised.value.code is ErrorCode.UNAVAILABLE


async def test_streams_are_created_idempotently_on_file_storage(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_stream(js, EVENTS, replicas=1)
    await ensure_stream(js, EVENTS, replicas=1)  # a second replica starting does the same
    info = await js.stream_info(EVENTS.name)
    assert info.config.subjects == list(EVENTS.subjects)
    assert info.config.storage == StorageType.FILE  # survives a NATS restart
    assert info.config.retention == RetentionPolicy.LIMITS
