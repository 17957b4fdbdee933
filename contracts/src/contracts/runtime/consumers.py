"""Durable JetStream consumers, declared once and run by the service runtime.

A service declares what it consumes (`Durable`: the stream, the durable name, the message type, the limits) and
hands the runtime a typed handler: `runtime.consume(durable, handler)` for one message at a time,
`runtime.consume_batches(durable, handler)` for a whole fetched batch (one database transaction for many). The
runtime creates the stream and the consumer at start (every replica does: idempotent), and runs the loop every
consumer needs: fetch a batch, decode, call the handler, ack on success, nak with a delay on failure (so the message
comes back, here or at another replica), terminate a message that will never decode, back off while fetching or
handling keeps failing, create the consumer again if it was deleted, and keep long work alive (`in_progress`) so
JetStream does not hand it to another replica meanwhile. The replicas of a service share the one durable consumer,
so they split its messages like a queue; messages not acknowledged (the replica died) are delivered again.

Work that must not be fetched before there is room for it, and that ends long after its handler returns (a job
waiting for a ComfyUI slot, then running there for minutes), uses `DurableFamily`: durables made per key from one
template (e.g. one per API key, for fair share), one message fetched at a time from the key the caller chooses for
that round, and a handler that owns the ack (it acks, naks or keeps the message alive when the work really ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.runtime.bus import ensure_stream, through_election
from contracts.streams import StreamSpec

# A pull request's message is waited for this long past the request's expiry (see DurableConsumer._pull_one).
LATE_ANSWER_S = 1.0
PULL_PREFIX = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT"  # + .<stream>.<consumer>: where a pull request is sent

M = TypeVar("M")
K = TypeVar("K", bound=Hashable | None)

_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("message_headers", default=None)


def message_headers() -> Mapping[str, str] | None:
    """The NATS headers of the message a `consume` handler is handling (e.g. a trace's context), None when it has
    none."""
    return _headers.get()


@dataclass(frozen=True, slots=True)
class Retry:
    """A handler's answer for a message to try again later: it is delivered again after `after_s`."""

    after_s: float


MessageHandler = Callable[[M], Awaitable[Retry | None]]  # None: done (acknowledged)
BatchHandler = Callable[[list[M]], Awaitable[None]]  # returns: all done; raises: all delivered again
# Owns the message: acks, naks or keeps it in progress itself, when its work really ends; raises: delivered again.
OwnedHandler = Callable[[Msg], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Durable(Generic[M]):
    """One durable pull consumer on a stream, shared by every replica of the service that declares it."""

    name: str
    stream: StreamSpec
    # What its messages decode into: a msgspec Struct or a tagged union of Structs.
    message: Any
    description: str
    what: str  # one message, for the log: "generation event"
    doing: str  # what handling them does, for the log: "recording events"
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    ack_wait_s: float  # a message not acknowledged within this (its replica died) goes to another replica
    max_ack_pending: int  # messages handed out and not yet acknowledged, over all replicas
    batch: int  # messages fetched at once
    fetch_wait_s: float = 2.0
    nak_delay_s: float = 2.0  # a message whose handler failed comes back after this
    # While fetching or handling keeps failing, the waits between tries (the last one repeats).
    retry_delays_s: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30)
    # In one batch, messages with the same key (from their subject) are handled one after the other, in stream
    # order; different keys at the same time. None: the whole batch one after the other.
    in_order_by: Callable[[str], str] | None = None
    # With in_order_by: the log lines written while a group is handled carry its key under this name ("job_id").
    context_key: str | None = None
    # After a batch that did not fill, wait this long before fetching again, so the next batch holds more.
    gather_s: float = 0.0
    # Work that may outlast ack_wait_s: tell JetStream this often that the message is still in progress.
    keep_alive_s: float | None = None
    # The subjects it takes (default: the stream's first), e.g. those of one key of a family (see DurableFamily).
    filter_subject: str | None = None
    # The server removes the consumer unused this long (a family's member); None: never.
    inactive_threshold_s: float | None = None

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.name,
            description=self.description,
            deliver_policy=self.deliver_policy,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,  # never give up on a message: a database outage must not lose it
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject or self.stream.subjects[0],
            inactive_threshold=self.inactive_threshold_s,
        )


@dataclass
class _Failing:
    since: float
    error: str


@dataclass
class DurableConsumer(Generic[M]):
    """A declared consumer while the service runs: its loop, and how it is doing (for health checks)."""

    durable: Durable[M]
    js_of: Callable[[], JetStreamContext]
    replicas: int
    log: structlog.stdlib.BoundLogger
    each: MessageHandler[M] | None = None
    batches: BatchHandler[M] | None = None
    failing: _Failing | None = None
    # The connection fetch_one sends its pull requests on (a DurableFamily's member).
    nc_of: Callable[[], NatsClient] | None = None
    _sub: JetStreamContext.PullSubscription | None = None  # run's; fetch_one sends its own pull requests
    _created: bool = False  # the stream and the consumer exist, as far as this consumer knows (fetch_one's)
    _decoder: msgspec.json.Decoder[M] = field(init=False)
    _answers: Subscription | None = None  # fetch_one's: the answers to its pull requests, on <_inbox>.<request>
    _inbox: str = ""
    _requests: int = 0

    def __post_init__(self) -> None:
        self._decoder = msgspec.json.Decoder(self.durable.message)
        self.log = self.log.bind(consumer=self.durable.name)

    async def setup(self) -> None:
        """Create the stream and the consumer if missing (idempotent: every replica does this at start), and bind
        the pull subscription `run` fetches with."""
        await self.create()
        self._sub = await self.js_of().pull_subscribe_bind(durable=self.durable.name, stream=self.durable.stream.name)

    async def create(self) -> None:
        """Create the stream and the consumer if missing (idempotent); all fetch_one needs: it binds no
        subscription of nats-py's, whose inbox it would never read."""
        js = self.js_of()
        await ensure_stream(js, self.durable.stream, self.replicas)
        await js.add_consumer(self.durable.stream.name, self.durable.config())
        self._created = True

    async def info(self) -> ConsumerInfo:
        info: ConsumerInfo = await self.js_of().consumer_info(self.durable.stream.name, self.durable.name)
        return info

    def failing_for_s(self) -> float:
        """How long fetching or handling has failed without a success in between (0 when it works)."""
        return 0.0 if self.failing is None else time.time() - self.failing.since

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._round()
                if self.failing is not None:
                    self.log.info(f"{self.durable.doing} again")
                self.failing = None
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delays = self.durable.retry_delays_s
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
                if self.failing is None:
                    self.failing = _Failing(time.time(), "")
                self.failing.error = str(exc) or type(exc).__name__
                self.log.warning(f"{self.durable.doing} failed; retrying", error=str(exc), retry_in_s=delay)
                if isinstance(exc, NotFoundError):
                    self._sub = None  # the stream or the consumer was deleted: create them again
                await asyncio.sleep(delay)

    async def _round(self) -> None:
        if self._sub is None:
            await self.setup()
        assert self._sub is not None
        try:
            messages = await self._sub.fetch(self.durable.batch, timeout=self.durable.fetch_wait_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return  # nothing new: the stream is idle
        decoded = [(msg, message) for msg in messages if (message := await self._decoded(msg)) is not None]
        if decoded:
            with self._kept_alive([msg for msg, _ in decoded]):
                if self.batches is not None:
                    await self._handle_batch(decoded)
                else:
                    await asyncio.gather(*(self._handle_in_order(key, group) for key, group in self._groups(decoded)))
        if messages and len(messages) < self.durable.batch and self.durable.gather_s:
            await asyncio.sleep(self.durable.gather_s)

    async def _decoded(self, msg: Msg) -> M | None:
        try:
            return self._decoder.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # It will never decode: drop it (loudly) instead of blocking the consumer behind it.
            self.log.error(f"undecodable {self.durable.what} dropped", subject=msg.subject, error=str(exc))
            await msg.term()
            return None

    async def _handle_batch(self, decoded: list[tuple[Msg, M]]) -> None:
        assert self.batches is not None
        try:
            await self.batches([message for _, message in decoded])
        except Exception:
            for msg, _ in decoded:  # delivered again after the delay (e.g. once the database is back)
                await msg.nak(delay=self.durable.nak_delay_s)
            raise
        for msg, _ in decoded:
            await msg.ack()

    def _groups(self, decoded: list[tuple[Msg, M]]) -> Iterator[tuple[str | None, list[tuple[Msg, M]]]]:
        key_of = self.durable.in_order_by
        if key_of is None:
            yield None, decoded
            return
        groups: dict[str, list[tuple[Msg, M]]] = {}
        for msg, message in decoded:
            groups.setdefault(key_of(msg.subject), []).append((msg, message))
        yield from groups.items()

    async def _handle_in_order(self, key: str | None, group: list[tuple[Msg, M]]) -> None:
        if key is not None and self.durable.context_key is not None:
            # In a task of its own (gather): the key is on this group's log lines only.
            structlog.contextvars.bind_contextvars(**{self.durable.context_key: key})
        for msg, message in group:
            await self._handle_one(msg, message)

    async def _handle_one(self, msg: Msg, message: M) -> None:
        assert self.each is not None
        _headers.set(msg.headers)
        try:
            outcome = await self.each(message)
        except Exception as exc:  # e.g. the database: the message comes back
            self.log.warning(f"{self.durable.what} not handled; retrying", subject=msg.subject, error=str(exc))
            await msg.nak(delay=self.durable.nak_delay_s)
            return
        if outcome is not None:
            await msg.nak(delay=outcome.after_s)
        else:
            await msg.ack()

    @contextlib.contextmanager
    def _kept_alive(self, messages: list[Msg]) -> Iterator[None]:
        """While the block runs, tell JetStream every keep_alive_s that its messages are still being worked on."""
        every = self.durable.keep_alive_s
        if every is None:
            yield
            return

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(every)
                for msg in messages:
                    if not msg.is_acked:  # acknowledged (or nakked) meanwhile: nothing to keep
                        with contextlib.suppress(Exception):  # NATS away: at worst the message comes back
                            await msg.in_progress()

        task = asyncio.ensure_future(keep_alive())
        try:
            yield
        finally:
            task.cancel()

    async def fetch_one(self) -> Msg | None:
        """One message for a handler that owns its ack (see `hand_over`); None when none waits within fetch_wait_s,
        or when fetching failed (logged, after a short wait; the consumer is made again at the next fetch, e.g. once
        the server removed it unused or NATS is back)."""
        try:
            if not self._created:
                await through_election(self.create, f"creating the consumer {self.durable.name}")
            return await self._pull_one()
        except (TimeoutError, nats.errors.TimeoutError):
            return None
        except Exception as exc:
            self.log.warning(f"cannot fetch {self.durable.what}s right now", error=str(exc) or type(exc).__name__)
            self._created = False
            await asyncio.sleep(self.durable.retry_delays_s[0])
            return None

    async def _pull_one(self) -> Msg | None:
        """One pull request for one message. The server holds it fetch_wait_s and answers with the message, or with
        "408 Request Timeout" at its expiry: None at once then. A message is waited for LATE_ANSWER_S past the
        expiry: sent just before it, on a busy loop it arrives after; given up on, it would be returned only by a
        later fetch, and if the process died first, held by nobody that knew it until ack_wait (the dispatcher's
        take-over time: chaos stalls of ~27 s). nats-py's fetch gives up 0.1 ms after the expiry, and its private
        _fetch_one, used before, ignored the 408: a key with nothing to give cost fetch_wait_s + LATE_ANSWER_S."""
        assert self.nc_of is not None, "fetch_one needs the connection: DurableConsumer(nc_of=...)"
        nc = self.nc_of()
        if self._answers is None:
            self._inbox = nc.new_inbox()
            self._answers = await nc.subscribe(f"{self._inbox}.*")
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        wait = self.durable.fetch_wait_s
        request = msgspec.json.encode({"batch": 1, "expires": int(wait * 1_000_000_000)})
        await nc.publish(f"{PULL_PREFIX}.{self.durable.stream.name}.{self.durable.name}", request, reply=reply)
        deadline = time.monotonic() + wait + LATE_ANSWER_S
        while (left := deadline - time.monotonic()) > 0:
            answer = await self._answers.next_msg(timeout=left)
            status = (answer.headers or {}).get("Status")
            if status is None:
                return answer  # a message: this request's, or the late one of a request given up on
            if answer.subject == reply and status != "100":  # not an earlier request's end, nor a heartbeat
                if status in ("408", "404"):  # expired, or nothing to give
                    return None
                described = (answer.headers or {}).get("Description", "")
                raise nats.errors.Error(f"the server answered a pull request with {status} {described}".strip())
        return None

    async def hand_over(self, msg: Msg, handler: OwnedHandler) -> None:
        """`handler(msg)`, which owns the ack from now on; a message it fails on is nakked with nak_delay_s, one whose
        handler is cancelled before it returns (the service stopping) at once, for the next start or another replica
        (else it would wait out ack_wait_s: the take-over time)."""
        try:
            await handler(msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise
        except Exception:
            self.log.exception(f"{self.durable.what} not handled; it will be delivered again", subject=msg.subject)
            # The nak may fail too (NATS unreachable): the message is then delivered again after ack_wait_s.
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.durable.nak_delay_s)


@dataclass
class DurableFamily(Generic[K, M]):
    """Durable consumers made per key from one template, each on first use; one message at a time is taken from
    the first of the keys the caller names (its choice for this round, e.g. fair share between API keys) that has
    one, and handed to a handler that owns its ack."""

    durable_of: Callable[[K], Durable[M]]
    js_of: Callable[[], JetStreamContext]
    replicas: int
    log: structlog.stdlib.BoundLogger
    nc_of: Callable[[], NatsClient]
    _members: dict[K, DurableConsumer[M]] = field(default_factory=dict)

    def member(self, key: K) -> DurableConsumer[M]:
        consumer = self._members.get(key)
        if consumer is None:
            consumer = self._members[key] = DurableConsumer(
                self.durable_of(key), self.js_of, self.replicas, self.log, nc_of=self.nc_of
            )
        return consumer

    async def open(self, key: K) -> None:
        """Create the key's consumer now (at start) rather than at its first fetch."""
        await through_election(self.member(key).create, f"creating the consumer {self.member(key).durable.name}")

    async def take(self, keys: Iterable[K], handler: OwnedHandler) -> bool:
        """Fetch one message from the first of `keys` that has one and hand it over to `handler`; False when none
        had one."""
        for key in keys:
            consumer = self.member(key)
            msg = await consumer.fetch_one()
            if msg is not None:
                await consumer.hand_over(msg, handler)
                return True
        return False
