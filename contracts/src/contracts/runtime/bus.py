"""The one NATS connection helper, typed request/reply over the bus, and JetStream set-up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar, Generic, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, NoRespondersError, NoServersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from contracts.endpoints import Endpoint
from contracts.envelope import Reply
from contracts.errors import ErrorCode, HubError
from contracts.messages.events import GenerationEvent
from contracts.runtime import tracing
from contracts.runtime.config import Settings
from contracts.runtime.logs import get_logger
from contracts.streams import (
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    BucketSpec,
    StreamSpec,
    event_subject,
    is_job_id,
    job_of_event_subject,
)
from contracts.topics import Topic

T = TypeVar("T")
M = TypeVar("M")
Req = TypeVar("Req", bound=msgspec.Struct)
Res = TypeVar("Res")
B = TypeVar("B")  # what a BucketStore binds to: a KeyValue, an ObjectStore

log = get_logger("bus")

# A follower without an idle timeout still re-reads the stream this often while no event comes (see job_events).
CATCH_UP_S = 5.0
BEHIND_RETRY_S = 1.0  # a follower whose re-read failed (NATS away) tries again this often


async def connect(settings: Settings, name: str, *, initial_wait_s: float = 30.0) -> NatsClient:
    """Connect with endless reconnects; wait up to `initial_wait_s` for a server that is still starting.

    (nats-py itself may keep retrying a first connection; a service stays stoppable meanwhile, see
    ServiceRuntime.run.)"""

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # a drain at shutdown is not worth a warning
            log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected", server=str(nc.connected_url.netloc) if nc.connected_url else None)

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    deadline = asyncio.get_running_loop().time() + initial_wait_s
    delay = 0.1
    while True:
        nc = NatsClient()
        try:
            await nc.connect(
                servers=settings.nats_servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py annotates int; it sleeps any number
                connect_timeout=2,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
                drain_timeout=int(max(settings.shutdown_timeout_s, 1)),
            )
            return nc
        except (TimeoutError, NoServersError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise HubError(
                    ErrorCode.UNAVAILABLE,
                    f"cannot reach NATS at {settings.nats_url} ({exc}); start nats-server or fix HUB_NATS_URL",
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# A replica that restarts or subscribes a moment after the caller looked is not "down": ask again briefly.
NO_RESPONDER_RETRIES_S = (0.05, 0.1, 0.2)
# An idempotent request asked again found nobody listening while an earlier ask is open: asked again this soon.
NOBODY_PAUSE_S = 0.2
# A client of a cluster whose server died is back on another within this; a longer wait is an outage.
RECONNECT_GRACE_S = 0.5
DISCONNECT_POLL_S = 0.05  # how often a request in flight looks at its connection
RETRY_AFTER_S = 5  # what a caller told "the hub is reconnecting" is asked to wait before it tries again


async def require_connection(nc: NatsClient, *, grace_s: float = RECONNECT_GRACE_S) -> None:
    """Return once NATS is connected; raise UNAVAILABLE after `grace_s` while it is not (nats-py would buffer a
    request until its timeout, 10-30 s, so a caller learns of an outage at once instead)."""
    deadline = asyncio.get_running_loop().time() + grace_s
    while not nc.is_connected:
        if nc.is_closed:
            raise HubError(ErrorCode.UNAVAILABLE, "the hub's NATS connection is closed (the service is stopping)")
        if asyncio.get_running_loop().time() >= deadline:
            raise HubError(
                ErrorCode.UNAVAILABLE,
                f"the hub is reconnecting to NATS (its message bus); try again in {RETRY_AFTER_S} s",
                details={"retry_after_s": RETRY_AFTER_S},
            )
        await asyncio.sleep(0.05)


async def unless_disconnected(nc: NatsClient, pending: Awaitable[T], what: str) -> T:
    """Await `pending` (a request), but raise UNAVAILABLE as soon as the NATS connection drops meanwhile: its answer
    would be lost with the connection, and nats-py would only report that at the request's timeout (30 s)."""
    reconnects = nc.stats["reconnects"]
    task = asyncio.ensure_future(pending)
    try:
        while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL_S))[0]:
            if not nc.is_connected or nc.stats["reconnects"] != reconnects:
                raise HubError(
                    ErrorCode.UNAVAILABLE,
                    f"the hub lost its NATS connection (message bus) while {what}; try again in {RETRY_AFTER_S} s",
                    details={"retry_after_s": RETRY_AFTER_S},
                )
        return task.result()
    finally:
        task.cancel()


class NobodyListensError(HubError):
    """No replica of the service listens on the subject (none runs, or it is restarting): the request was not
    delivered, so asking again is safe."""


async def _request_with_responders(nc: NatsClient, subject: str, payload: bytes, timeout: float) -> Msg:
    """One request, asked again within ~0.35 s while nobody listens on `subject` yet."""
    await require_connection(nc)
    headers = tracing.inject()  # None while tracing is off
    for pause in (*NO_RESPONDER_RETRIES_S, None):
        try:
            return await nc.request(subject, payload, timeout=timeout, headers=headers)
        except NoRespondersError:
            if pause is None:
                raise NobodyListensError(
                    ErrorCode.UNAVAILABLE,
                    f"no service is answering {subject}: is the {subject.split('.')[1]} service running?",
                ) from None
            await asyncio.sleep(pause)
        except (TimeoutError, NatsTimeoutError):
            raise HubError(ErrorCode.TIMEOUT, f"{subject} did not answer within {timeout:g} s") from None
    raise AssertionError("unreachable")


async def _asked_again_while_unanswered(
    nc: NatsClient, subject: str, payload: bytes, timeout: float, first_wait_s: float
) -> Msg:
    """An idempotent request, asked again while unanswered: after `first_wait_s`, then twice as long each time, of
    whoever answers `subject` now, the earlier asks still awaited (the first answer wins), all within `timeout`.

    A replica killed while it holds a request never answers it: without this the caller waits out the whole
    timeout (10 s) although the restarted replica, or another one, would answer at once. A later ask that finds
    nobody listening (the replica is still restarting) ends quietly, and the next one goes out NOBODY_PAUSE_S later;
    the first finding nobody is reported at once, as without asking again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def ask() -> asyncio.Future[Msg]:
        return asyncio.ensure_future(_request_with_responders(nc, subject, payload, deadline - loop.time()))

    first = ask()
    asks = {first}  # the first stays in until it ends, and then this ends
    wait_s = first_wait_s
    next_ask = loop.time() + wait_s
    try:
        while True:
            done, asks = await asyncio.wait(
                asks, timeout=max(0.0, min(next_ask, deadline) - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for finished in done:
                error = finished.exception()
                if error is None:
                    return finished.result()
                if finished is first or not isinstance(error, NobodyListensError):
                    raise error
                next_ask = min(next_ask, loop.time() + NOBODY_PAUSE_S)  # the restart is under way: ask soon
            if loop.time() >= deadline:
                raise HubError(ErrorCode.TIMEOUT, f"{subject} did not answer within {timeout:g} s")
            if loop.time() >= next_ask:
                asks.add(ask())
                wait_s *= 2
                next_ask = loop.time() + wait_s
    finally:
        for pending in asks:
            pending.cancel()


async def request(
    nc: NatsClient,
    subject: str,
    message: msgspec.Struct,
    result_type: type[T],
    *,
    timeout: float = 10.0,
    ask_again_s: float | None = None,
) -> T:
    """Send `message` to the service answering `subject` and return its result decoded as `result_type`;
    `ask_again_s` (idempotent requests only): asked again while unanswered, see `_asked_again_while_unanswered`.

    The untyped form under `call`: for a declared endpoint use `call`, which takes both types from it. The
    service's `ErrorInfo` is raised as `HubError`, so it travels on unchanged to the caller's caller.
    """
    payload = msgspec.json.encode(message)
    with tracing.span(subject, kind="client"):
        if ask_again_s is None:
            msg = await _request_with_responders(nc, subject, payload, timeout)
        else:
            msg = await _asked_again_while_unanswered(nc, subject, payload, timeout, ask_again_s)
    try:
        # Reply is parametrised at run time with the caller's reply type; msgspec decodes and validates to it.
        reply = msgspec.json.decode(msg.data, type=Reply[result_type])  # type: ignore[valid-type]
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HubError(ErrorCode.INTERNAL, f"{subject} answered with a malformed reply: {exc}") from None
    return reply.unwrap()


async def call(
    nc: NatsClient,
    endpoint: Endpoint[Req, Res],
    message: Req,
    *,
    timeout: float | None = None,
    ask_again: bool = True,
) -> Res:
    """Ask the service answering `endpoint` and return its typed reply (within `timeout`, by default the
    endpoint's own). The service's `ErrorInfo` is raised as `HubError`, so it travels on unchanged.
    An endpoint declared idempotent (`ask_again_s`) is asked again while unanswered, unless `ask_again` is False
    (this request is not: e.g. a prompt build that runs an LLM)."""
    return await request(
        nc,
        endpoint.subject,
        message,
        endpoint.reply,
        timeout=endpoint.timeout_s if timeout is None else timeout,
        ask_again_s=endpoint.ask_again_s if ask_again else None,
    )


async def publish(nc: NatsClient, topic: Topic[M], message: M) -> None:
    """Publish `message` on a fan-out `topic` (declared in `contracts.topics`): every subscribed replica hears it."""
    await nc.publish(topic.subject, topic.encode(message))


async def publish_durably(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    nc: NatsClient,
    headers: dict[str, str] | None = None,
    within_s: float = 30.0,
) -> None:
    """Publish to a stream and wait for it to be stored, retrying while the stream has no leader (a NATS
    server of a cluster just died: a new leader is elected within seconds) and while NATS is away (see
    through_election). `nc` (js's connection) is watched, so a publish in flight when nats-server dies is made again
    as soon as it is back, not after its 5 s timeout (the acknowledgement is lost with the server). With a
    `Nats-Msg-Id` header a retry of a publish that did land is dropped by JetStream, so nothing is stored twice."""
    headers = tracing.inject(headers)  # the trace goes on with whoever consumes the message
    await through_election(lambda: js.publish(subject, payload, headers=headers), f"storing {subject}", within_s, nc=nc)


# What a JetStream call raises while its stream has no leader, or (with a connection to watch) while NATS is away.
_NO_LEADER_ERRORS = (TimeoutError, NoStreamResponseError, NatsTimeoutError)
_NATS_AWAY_ERRORS = (
    *_NO_LEADER_ERRORS,
    NoRespondersError,  # a restarted server whose JetStream is not ready yet
    ServiceUnavailableError,
    OutboundBufferLimitError,
    ConnectionReconnectingError,
)


# A stream at its limits with discard "new" refusing a publish ("maximum messages exceeded", "... bytes exceeded"):
# a 503 like a JetStream not ready yet, but the answer of one that is up, for the caller to report (streams.JOBS).
_STORE_REFUSED = 10077  # JSStreamStoreFailedF


def _worth_retrying(exc: Exception, *, watching: bool) -> bool:
    """Whether `exc` may pass with time: a stream without leader, or (`watching` the connection) NATS away."""
    # getattr: some APIError subclasses (KeyWrongLastSequenceError, a KV create of a key that exists) have none
    if isinstance(exc, APIError) and getattr(exc, "err_code", None) == _STORE_REFUSED:
        return False
    if isinstance(exc, HubError):  # e.g. require_connection, or the output store finding NATS away
        return watching and exc.code == ErrorCode.UNAVAILABLE
    return isinstance(exc, _NATS_AWAY_ERRORS if watching else _NO_LEADER_ERRORS)


async def through_election(
    call: Callable[[], Awaitable[T]], what: str, within_s: float = 30.0, *, nc: NatsClient | None = None
) -> T:
    """Run a JetStream call, retrying while its stream or bucket has no leader (a NATS server of a cluster just
    died, or a replicated stream was just created: a leader is elected within seconds).

    With `nc`, also across an outage of NATS (a restart, a crash) up to `within_s`: each attempt waits until the
    connection is back (a call made while nats-py reconnects is only buffered, and a large one fills its buffer),
    an attempt in flight when the connection drops is given up at once and made again once it is back (its answer
    was lost with the connection: waiting for it took the call's whole timeout, 5 s, after a restart of
    nats-server), and the wait is logged, naming what waits."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + within_s
    delay = 0.1
    waited = False
    while True:
        try:
            if nc is not None and not nc.is_connected:
                if not waited:
                    log.warning("NATS is away; waiting for it", to=what, at_most_s=round(deadline - loop.time(), 1))
                waited = True
                await require_connection(nc, grace_s=max(deadline - loop.time(), 0.0))
            result = await (call() if nc is None else unless_disconnected(nc, call(), what))
            if waited:
                log.info("NATS is back", done=what, waited_s=round(loop.time() - started, 1))
            return result
        except Exception as exc:
            if not _worth_retrying(exc, watching=nc is not None):
                raise
            if loop.time() + delay > deadline:
                if nc is not None and not nc.is_connected:
                    message = f"NATS was away for {within_s:g} s: {what} gave up"
                else:
                    message = f"JetStream: {what} failed for {within_s:g} s: {exc}"
                raise HubError(ErrorCode.UNAVAILABLE, message) from exc
            if nc is not None and not waited:
                log.warning("NATS is away; waiting for it", to=what, at_most_s=round(deadline - loop.time(), 1))
            waited = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType.FILE,  # survives a NATS restart
        num_replicas=replicas,
        max_age=spec.max_age_s,
        max_msgs=spec.max_msgs,
        max_bytes=spec.max_bytes,
        discard=DiscardPolicy(spec.discard),
        duplicate_window=spec.duplicate_window_s,
        description=spec.description,
        allow_direct=True,  # followers read a job's events by direct gets, without a consumer each (job_events)
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int) -> None:
    """Create the stream, or update it to the spec if it exists (every replica may race to do this)."""
    config = stream_config(spec, replicas)

    async def create_or_update() -> None:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)

    # A cluster that has just started (or lost a server) may have no meta leader for a few seconds.
    await through_election(create_or_update, f"creating the {spec.name} stream")


async def open_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> KeyValue:
    """Bind to the key-value bucket, creating it on first use (another replica may create it at the same moment),
    riding out a cluster without a JetStream leader for a moment. File storage: a NATS restart keeps what it holds."""
    return await through_election(lambda: _find_or_create_bucket(js, spec, replicas), f"opening the {spec.name} bucket")


async def _find_or_create_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> KeyValue:
    try:
        return await js.key_value(spec.name)
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await js.create_key_value(
            config=KeyValueConfig(
                bucket=spec.name,
                description=spec.description,
                ttl=spec.ttl_s or None,
                max_bytes=spec.max_bytes,
                history=1,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )
    except Exception as creation_error:
        # Lost a creation race with another replica: the bucket exists now. Otherwise the creation's own
        # error (e.g. more replicas asked for than NATS servers are up) is the one worth reading.
        try:
            return await js.key_value(spec.name)
        except (BucketNotFoundError, NotFoundError):
            raise creation_error from None


class BucketStore(Generic[B]):
    """A store that keeps its state in one JetStream bucket (`bucket_spec`), shared by every replica. `open()` binds
    to it at start and `_bucket()` on first use, creating it if none exists yet. `_opened` is None until then, so a
    store that must not wait for NATS can do without the bucket instead."""

    bucket_spec: ClassVar[BucketSpec]

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self._opened: B | None = None

    async def open(self) -> None:
        await self._bucket()

    async def _bucket(self) -> B:
        if self._opened is None:
            self._opened = await through_election(self._find_or_create, f"opening the {self.bucket_spec.name} bucket")
        return self._opened

    async def _find_or_create(self) -> B:
        raise NotImplementedError


class KvStore(BucketStore[KeyValue]):
    """A BucketStore in a key-value bucket, as open_bucket makes it."""

    async def _find_or_create(self) -> KeyValue:
        return await _find_or_create_bucket(self._js, self.bucket_spec, self._replicas)


class _JobEventFanout:
    """One core subscription to every job's events per connection, handed to the followers of each job: a
    follower costs the server nothing (no consumer each; nats-server refuses consumers past its limit)."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._followers: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._subscribing = asyncio.Lock()
        self._subscribed = False

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """A queue that gets each event of `job_id` published from now on (payloads, in publish order)."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._followers.setdefault(job_id, set()).add(queue)
        try:
            await self._subscribe()
            yield queue
        finally:
            followers = self._followers.get(job_id, set())
            followers.discard(queue)
            if not followers:
                self._followers.pop(job_id, None)

    async def _subscribe(self) -> None:
        """Once per connection (later followers wait for the first): whatever is published after this reaches us.
        A follower that comes later asks the server nothing: the interest is there already, and an event handed to
        `_deliver` after the follower's queue was registered goes to it (a round trip per follower cost the gateway
        a PING/PONG per followed job)."""
        async with self._subscribing:
            if not self._subscribed:
                await self._nc.subscribe(EVENTS_SUBJECTS, cb=self._deliver)
                self._subscribed = True
                await self._nc.flush()  # the server has the interest

    async def _deliver(self, message: Msg) -> None:
        for queue in self._followers.get(job_of_event_subject(message.subject), ()):
            queue.put_nowait(message.data)


_fanouts: weakref.WeakKeyDictionary[NatsClient, _JobEventFanout] = weakref.WeakKeyDictionary()


def _fanout(nc: NatsClient) -> _JobEventFanout:
    if nc not in _fanouts:
        _fanouts[nc] = _JobEventFanout(nc)
    return _fanouts[nc]


# A stored-events read asks for this many at once (a job has a few dozen events at most: progress ticks each second).
STORED_BATCH = 256
DIRECT_GET_TIMEOUT_S = 5.0  # nats-py's JetStream default, which the one-by-one direct gets used
_END_OF_BATCH, _NOT_FOUND, _NO_RESPONDERS = "204", "404", "503"


class _DirectBatches:
    """Batched direct gets (nats-server 2.11+): one request answered by every stored message from a sequence on and
    an end-of-batch marker, instead of a request per message and one more to find there is none. The answers come to
    one inbox subscription per connection (a token per read), as nats-py's own requests do."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._reads: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count()
        self._subscribing = asyncio.Lock()
        self._subscribed = False

    async def read(self, stream: str, subject: str, seq: int, batch: int) -> tuple[list[Msg], bool]:
        """At most `batch` messages on `subject` from `seq` on, and whether more may follow (a batch cut short by
        `batch` or the server's size limit, or a server that answers one message per request: ask again from the
        next sequence)."""
        await self._subscribe()
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._reads[token] = queue
        try:
            ask = msgspec.json.encode({"seq": seq, "next_by_subj": subject, "batch": batch})
            await self._nc.publish(f"$JS.API.DIRECT.GET.{stream}", ask, reply=f"{self._prefix}.{token}")
            return await asyncio.wait_for(_batch_from(queue, stream), DIRECT_GET_TIMEOUT_S)
        except TimeoutError as exc:
            raise HubError(ErrorCode.UNAVAILABLE, f"the {stream} stream does not answer ({exc!r})") from exc
        finally:
            del self._reads[token]

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if not self._subscribed:  # published after on this connection, so the server has it before the asks
                await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
                self._subscribed = True

    async def _route(self, message: Msg) -> None:
        queue = self._reads.get(message.subject.rsplit(".", 1)[1])
        if queue is not None:
            queue.put_nowait(message)


async def _batch_from(queue: asyncio.Queue[Msg], stream: str) -> tuple[list[Msg], bool]:
    found: list[Msg] = []
    while True:
        message = await queue.get()
        headers = message.headers or {}
        status = headers.get("Status")
        if status == _END_OF_BATCH:
            return found, int(headers.get("Nats-Num-Pending", "0")) > 0
        if status == _NOT_FOUND:
            return found, False
        if status is not None:
            name = "no responders" if status == _NO_RESPONDERS else headers.get("Description", "")
            raise HubError(ErrorCode.UNAVAILABLE, f"the {stream} stream does not answer ({status} {name})")
        found.append(message)
        if "Nats-Num-Pending" not in headers:  # a server without batches: one message per request
            return found, True


_direct_batches: weakref.WeakKeyDictionary[NatsClient, _DirectBatches] = weakref.WeakKeyDictionary()


async def direct_batch(nc: NatsClient, stream: str, subject: str, seq: int, batch: int) -> tuple[list[Msg], bool]:
    """At most `batch` stored messages on `subject` from sequence `seq` on, by one batched direct get (no consumer;
    any replica of the stream answers), and whether more may follow; their sequences are in the `Nats-Sequence`
    header. UNAVAILABLE when the stream does not answer."""
    if nc not in _direct_batches:
        _direct_batches[nc] = _DirectBatches(nc)
    return await _direct_batches[nc].read(stream, subject, seq, batch)


class _StoredEvents:
    """A job's events as stored in the events stream, read by batched direct gets from a cursor (no consumer)."""

    def __init__(self, nc: NatsClient, job_id: str) -> None:
        self._nc = nc
        self._filter = event_subject(job_id)
        self._next_seq = 1

    async def newer(self) -> AsyncIterator[bytes]:
        """The payloads stored since the last call (from the job's first event on the first call)."""
        more = True
        while more:
            found, more = await direct_batch(self._nc, EVENTS_STREAM, self._filter, self._next_seq, STORED_BATCH)
            for message in found:
                self._next_seq = int((message.headers or {})["Nats-Sequence"]) + 1
                yield message.data or b""


async def first_job_event(nc: NatsClient, job_id: str) -> GenerationEvent | None:
    """The first stored event of a job (its `accepted`, stored before the submit is answered), by one direct get;
    None when none is stored (an unknown id, or one the stream's retention removed), and for an id that is not one
    plain subject token: `*` or `a.>` would read the first event of any job."""
    if not is_job_id(job_id):
        return None
    found, _ = await direct_batch(nc, EVENTS_STREAM, event_subject(job_id), 1, 1)
    return _decoded(found[0].data or b"") if found else None


async def job_events(
    nc: NatsClient, job_id: str, *, idle_s: float | None = None
) -> AsyncIterator[GenerationEvent | None]:
    """Every event of one job from its first, in order, until the caller stops: those stored so far (direct
    gets from the events stream), then those published since (the connection's shared subscription).

    With `idle_s`, None comes after that long without an event (an SSE stream sends a keep-alive then). An event
    of a newer version than this code knows is skipped.
    """
    stored = _StoredEvents(nc, job_id)
    last_seq = 0
    async with _fanout(nc).follow(job_id) as live:
        payload: bytes | None = None
        reread, read_at = True, -1  # read_at: nc.stats["reconnects"] at the last re-read after a live event
        behind = False  # a re-read could not finish (NATS away): live events wait for it, so none is skipped
        while True:
            if reread or behind:
                older, complete = await _stored_since(stored, nc)
                behind = not complete
                for found in older:
                    if (event := _decoded(found)) is not None and event.seq > last_seq:
                        last_seq = event.seq
                        yield event
            live_event = None if payload is None or behind else _decoded(payload)
            if live_event is not None and live_event.seq > last_seq:
                last_seq = live_event.seq
                yield live_event
            try:
                wait_s = idle_s or CATCH_UP_S
                payload = await asyncio.wait_for(live.get(), min(wait_s, BEHIND_RETRY_S) if behind else wait_s)
            except TimeoutError:
                payload = None
                if idle_s is not None:
                    yield None
            # Re-read the stream before the first live event (one published while we joined may be stored only
            # now), after a reconnect (live ones were lost meanwhile) and in each quiet spell.
            reread = payload is None or read_at != nc.stats["reconnects"]
            if payload is not None:
                read_at = nc.stats["reconnects"]


async def _stored_since(stored: _StoredEvents, nc: NatsClient) -> tuple[list[bytes], bool]:
    """The payloads stored since the last read, and whether the read got to the end: not while NATS is away or its
    JetStream is not ready after a restart (the cursor stays where the read stopped; the next read goes on from
    there), so a follower rides out an outage instead of failing."""
    found: list[bytes] = []
    if not nc.is_connected:
        return found, False
    try:
        async for payload in stored.newer():
            found.append(payload)
    except HubError as exc:
        if exc.code != ErrorCode.UNAVAILABLE:
            raise
        return found, False
    return found, True


# A union of Structs, so one decoder made once: `msgspec.json.decode(payload, type=GenerationEvent)` rebuilds the
# union's decoding plan on every call (~17 us an event against ~0.5 us; msgspec caches plans for Structs only).
_EVENT_DECODER: msgspec.json.Decoder[GenerationEvent] = msgspec.json.Decoder(GenerationEvent)


def _decoded(payload: bytes) -> GenerationEvent | None:
    try:
        return _EVENT_DECODER.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
