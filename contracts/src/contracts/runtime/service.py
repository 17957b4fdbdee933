"""The service loop every service runs: one declarative way to handle each kind of message.

A service declares what it handles, then `run` serves it:
- `runtime.endpoint(endpoints.X.Y, handler)`: request/reply (`contracts.endpoints`). A `nats.micro` service
  (so `$SRV.PING|INFO|STATS.<name>` give discovery and per-endpoint statistics) answers each endpoint in the queue
  group of the service (so replicas share the load), decodes requests into msgspec Structs and answers every
  failure with the error envelope.
- `runtime.subscribe(topics.X.Y, handler)`: fan-out (`contracts.topics`), heard by every replica.
- `runtime.consume(durable, handler)` / `consume_batches`: a durable JetStream consumer shared by the replicas
  (`contracts.runtime.consumers`: fetch, ack, nak with a delay, keep-alive).
It drains cleanly on SIGTERM/SIGINT: no new requests, requests in flight finish, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import nats.micro
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from contracts import endpoints, subjects
from contracts.endpoints import Endpoint
from contracts.envelope import Reply
from contracts.errors import ErrorCode, ErrorInfo, HubError, error_from_validation
from contracts.messages.health import CheckResult, HealthReply, HealthRequest
from contracts.runtime import heap, tracing
from contracts.runtime.bus import connect
from contracts.runtime.config import ConfigError, Settings, load_settings
from contracts.runtime.consumers import BatchHandler, Durable, DurableConsumer, MessageHandler
from contracts.runtime.logs import configure_logging, get_logger
from contracts.runtime.metrics import ServiceMetrics, answer_scrapes
from contracts.topics import Topic

Req = TypeVar("Req", bound=msgspec.Struct)
Res = TypeVar("Res")
M = TypeVar("M")
Handler = Callable[[Req], Awaitable[Res]]
Check = Callable[[], Awaitable[str | None]]  # returns a short detail, raises when unhealthy
Hook = Callable[["ServiceRuntime"], Awaitable[None]]

_encoder = msgspec.json.Encoder()


class _Endpoint(msgspec.Struct, frozen=True):
    subject: str
    request_type: type
    handler: Callable[[Any], Awaitable[Any]]
    name: str
    metadata: dict[str, str]


class _Subscription(msgspec.Struct, frozen=True):
    topic: Topic[Any]
    handler: Callable[[Any], Awaitable[None]]


class _EndpointMeter:
    """What one endpoint's handlers really did: micro times only `accept`, which hands each request to a task
    and returns, so its own figures say ~0 ns and no error. These are reported in `$SRV.STATS` instead."""

    __slots__ = ("errors", "in_flight", "last_error", "processing_ns", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.processing_ns = 0
        self.in_flight = 0
        self.last_error: str | None = None

    def record(self, started_ns: int, error: ErrorInfo | None) -> None:
        self.requests += 1
        self.processing_ns += time.perf_counter_ns() - started_ns
        if error is not None:
            self.errors += 1
            self.last_error = f"{error.code}: {error.message}"[:200]

    def fill(self, stats: EndpointStats) -> dict[str, int]:
        stats.num_errors = self.errors
        stats.last_error = self.last_error
        stats.processing_time = self.processing_ns
        stats.average_processing_time = self.processing_ns // self.requests if self.requests else 0
        return {"answered": self.requests, "in_flight": self.in_flight}


class ServiceRuntime:
    """One running replica of a service."""

    def __init__(self, settings: Settings, *, version: str, description: str) -> None:
        self.settings = settings
        self.name = settings.service
        self.version = version
        self.description = description
        self.instance_id = uuid.uuid4().hex[:12]
        self.log = get_logger(self.name)
        self.started_at = time.time()
        self._endpoints: list[_Endpoint] = []
        self._subscriptions: list[_Subscription] = []
        self._subscribed = 0  # how many of them are open
        self._consumers: list[DurableConsumer[Any]] = []
        self._not_yet_spawned: list[tuple[Awaitable[Any], str]] = []  # spawned before the service was live
        self._live = False
        self._checks: dict[str, Check] = {}
        self._optional_checks: set[str] = set()
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._stop_requested = asyncio.Event()
        # Set by the process entry points (run_main, run_together), not in a test's process: see heap.py.
        self.settles_heap = False
        self._nc: NatsClient | None = None
        self._micro: Service | None = None
        self._meters: dict[str, _EndpointMeter] = {}
        self.metrics = ServiceMetrics(self.name, self.instance_id)
        self.metrics.on_scrape(self._runtime_metrics)
        self.endpoint(endpoints.health(self.name), self._health, name="health")

    # -- registration (before `run`) ---------------------------------------------------------------

    def endpoint(self, endpoint: Endpoint[Req, Res], handler: Handler[Req, Res], *, name: str | None = None) -> None:
        """Answer `endpoint` (declared in `contracts.endpoints`) with `handler(request)`; raise `HubError` in the
        handler for a domain error."""
        endpoint_name = name or endpoint.subject.removeprefix(f"{subjects.PREFIX}.{self.name}.").replace(".", "_")
        self._endpoints.append(
            _Endpoint(endpoint.subject, endpoint.request, handler, endpoint_name, endpoint.metadata())
        )

    def subscribe(self, topic: Topic[M], handler: Callable[[M], Awaitable[None]]) -> None:
        """Hear every message published on `topic` (declared in `contracts.topics`), as every replica does; a handler
        that fails is logged (nobody waits for an answer)."""
        self._subscriptions.append(_Subscription(topic, handler))

    def consume(self, durable: Durable[M], handler: MessageHandler[M]) -> DurableConsumer[M]:
        """Handle the messages of a durable JetStream consumer one at a time: acknowledged when `handler` returns
        None, delivered again after a delay when it returns `Retry` or raises."""
        return self._add_consumer(DurableConsumer(durable, self._js, self.settings.jetstream_replicas, self.log,
                                                  each=handler))  # fmt: skip

    def consume_batches(self, durable: Durable[M], handler: BatchHandler[M]) -> DurableConsumer[M]:
        """Handle each fetched batch of a durable JetStream consumer at once: all acknowledged when `handler`
        returns, all delivered again after a delay when it raises."""
        return self._add_consumer(DurableConsumer(durable, self._js, self.settings.jetstream_replicas, self.log,
                                                  batches=handler))  # fmt: skip

    def _add_consumer(self, consumer: DurableConsumer[M]) -> DurableConsumer[M]:
        self._consumers.append(consumer)
        return consumer

    def _js(self) -> JetStreamContext:
        return self.nc.jetstream()

    def health_check(self, name: str, check: Check, *, optional: bool = False) -> None:
        """`optional`: a failure is reported (with what is wrong) without making the service unhealthy."""
        self._checks[name] = check
        if optional:
            self._optional_checks.add(name)

    def on_startup(self, hook: Hook) -> None:
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Hooks run in reverse order of registration, after requests in flight have finished."""
        self._shutdown.append(hook)

    def spawn(self, coro: Awaitable[Any], *, name: str) -> None:
        """Run a background loop (health polling, schedules); it starts once the service is live (its endpoints,
        subscriptions and consumers ready) and is cancelled at shutdown."""
        if not self._live:
            self._not_yet_spawned.append((coro, name))
            return
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}:{name}")
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task crashed", task=task.get_name(), exc_info=task.exception())

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("the service is not connected yet")
        return self._nc

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._nc = await connect(self.settings, f"{self.name}-{self.instance_id}")
        await self._open_subscriptions()  # those declared before start: heard from the connection on
        for hook in self._startup:
            await hook(self)
        await self._open_subscriptions()  # those declared by startup hooks
        for consumer in self._consumers:
            await consumer.setup()
            self.spawn(consumer.run(), name=consumer.durable.name)
        self._micro = await nats.micro.add_service(
            self._nc,
            ServiceConfig(
                name=f"hub-{self.name}",
                version=self.version,
                description=self.description,
                metadata={"instance_id": self.instance_id, "host": socket.gethostname(), "pid": str(os.getpid())},
                queue_group=subjects.queue_group(self.name),
                stats_handler=self._endpoint_stats,
            ),
        )
        for endpoint in self._endpoints:
            await self._micro.add_endpoint(
                EndpointConfig(
                    name=endpoint.name,
                    subject=endpoint.subject,
                    handler=self._make_micro_handler(endpoint),
                    metadata=endpoint.metadata,
                )
            )
        await answer_scrapes(self._nc, self.metrics)
        await self._nc.flush()
        self._live = True
        for coro, name in self._not_yet_spawned:
            self.spawn(coro, name=name)
        self._not_yet_spawned.clear()
        self.log.info(
            "service started",
            version=self.version,
            instance_id=self.instance_id,
            endpoints=len(self._endpoints),
            nats=self.settings.nats_url,
        )

    async def stop(self) -> None:
        """Stop taking requests, let those in flight finish, run shutdown hooks, drain the connection."""
        if self._micro is not None:
            await self._micro.stop()
            self._micro = None
        if self._in_flight:
            self.log.info("waiting for requests in flight", count=len(self._in_flight))
            _, pending = await asyncio.wait(self._in_flight, timeout=self.settings.shutdown_timeout_s)
            for task in pending:
                task.cancel()
        await self._end_background()
        for hook in reversed(self._shutdown):
            try:
                await hook(self)
            except Exception:
                self.log.exception("shutdown hook failed", hook=getattr(hook, "__name__", repr(hook)))
        if self._nc is not None and not self._nc.is_closed:
            # Endpoints are stopped and requests in flight answered: flush what was published, then close.
            # (A drain would also wait out open JetStream fetches, up to its whole timeout.)
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()
        self.log.info("service stopped")

    async def _end_background(self) -> None:
        for coro, _name in self._not_yet_spawned:  # the start failed before they ran
            if asyncio.iscoroutine(coro):
                coro.close()
        self._not_yet_spawned.clear()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.serve()
        finally:
            await asyncio.to_thread(tracing.shutdown)  # the spans still batched are sent (a blocking HTTP call)

    async def serve(self) -> None:
        """Start, serve until `request_stop`, then stop gracefully; a failed start raises (after the stop).
        Signals are left to the caller: `run` for a service alone, `run_together` for several in one process."""
        self.log.info("starting", nats=self.settings.nats_url)
        try:
            starting = asyncio.ensure_future(self.start())
            stopping = asyncio.ensure_future(self._stop_requested.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # e.g. still waiting for NATS: a stop request ends the wait
                await _cancel_for_sure(starting)
                self.log.info("stop requested while starting")
                return
            stopping.cancel()
            starting.result()  # a failed start raises here
            if self.settles_heap:
                heap.settle_soon()
            await self._stop_requested.wait()
            self.log.info("stop requested")
        finally:
            await self.stop()

    def _runtime_metrics(self) -> list[Metric]:
        """Read at scrape time: NATS reconnects (nats-py counts them) and what each endpoint answered."""
        reconnects = CounterMetricFamily(
            self.metrics.name("nats_reconnects"), "Times this replica's NATS connection was re-established"
        )
        reconnects.add_metric([], self._nc.stats["reconnects"] if self._nc is not None else 0)
        requests = CounterMetricFamily(
            self.metrics.name("nats_requests"), "NATS requests answered, per endpoint", labels=["endpoint"]
        )
        errors = CounterMetricFamily(
            self.metrics.name("nats_request_errors"), "NATS requests answered with an error", labels=["endpoint"]
        )
        for name, meter in sorted(self._meters.items()):
            requests.add_metric([name], meter.requests)
            errors.add_metric([name], meter.errors)
        return [reconnects, requests, errors]

    # -- request handling ---------------------------------------------------------------------------

    def _endpoint_stats(self, stats: EndpointStats) -> dict[str, int]:
        """micro's STATS hook: the figures measured where each handler really runs (see _EndpointMeter)."""
        return self._meters.setdefault(stats.name, _EndpointMeter()).fill(stats)

    async def _open_subscriptions(self) -> None:
        for subscription in self._subscriptions[self._subscribed :]:
            await self.nc.subscribe(subscription.topic.subject, cb=self._make_listener(subscription))
        self._subscribed = len(self._subscriptions)

    def _make_listener(self, subscription: _Subscription) -> Callable[[Msg], Awaitable[None]]:
        topic = subscription.topic

        async def listen(msg: Msg) -> None:
            try:
                message = topic.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
                self.log.error("undecodable message dropped", subject=topic.subject, error=str(exc))
                return
            try:
                await subscription.handler(message)
            except Exception:
                self.log.exception("message handler failed", subject=topic.subject)

        return listen

    def _make_micro_handler(self, endpoint: _Endpoint) -> Callable[[MicroRequest], Awaitable[None]]:
        async def accept(request: MicroRequest) -> None:
            # nats-py runs one subscription's callbacks one at a time; answer each request in its own task
            # so a slow request does not hold up the next one.
            task = asyncio.ensure_future(self._answer(endpoint, request))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

        return accept

    async def _answer(self, endpoint: _Endpoint, request: MicroRequest) -> None:
        meter = self._meters.setdefault(endpoint.name, _EndpointMeter())
        started_ns = time.perf_counter_ns()
        meter.in_flight += 1
        try:
            with tracing.span(endpoint.subject, kind="server", parent=request.headers):
                reply = await self._reply_to(endpoint, request)
                if reply.error is not None:
                    tracing.note_error(reply.error.message)
        finally:
            meter.in_flight -= 1
        meter.record(started_ns, reply.error)
        await self._send(endpoint, request, reply)

    async def _reply_to(self, endpoint: _Endpoint, request: MicroRequest) -> Reply[Any]:
        reply: Reply[Any]
        try:
            message: Any = msgspec.json.decode(request.data or b"{}", type=endpoint.request_type)
            result = await endpoint.handler(message)
            reply = Reply(result=result)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            reply = Reply(error=error_from_validation(exc, endpoint.subject, endpoint.request_type))
        except HubError as exc:
            reply = Reply(error=exc.info)
        except Exception:
            ref = uuid.uuid4().hex[:10]
            self.log.exception("request failed", subject=endpoint.subject, ref=ref)
            reply = Reply(
                error=ErrorInfo(
                    code=ErrorCode.INTERNAL,
                    message=f"internal error in the {self.name} service; its log has the details under ref {ref}",
                    ref=ref,
                )
            )
        return reply

    async def _send(self, endpoint: _Endpoint, request: MicroRequest, reply: Reply[Any]) -> None:
        if not request._msg.reply:  # a publish, not a request: nobody to answer
            if reply.error is not None:
                self.log.warning("message without reply subject failed", subject=endpoint.subject, error=reply.error)
            return
        try:
            if reply.error is not None:
                # micro's error headers let NATS tooling count failures; a header value is one line.
                headline = " ".join(reply.error.message.split())[:200]
                await request.respond_error(reply.error.code, headline, data=_encoder.encode(reply))
            else:
                await request.respond(_encoder.encode(reply))
        except Exception:
            self.log.exception("could not send reply", subject=endpoint.subject)

    async def _health(self, _request: HealthRequest) -> HealthReply:
        checks = [CheckResult(name="nats", ok=self.nc.is_connected, detail=self.settings.nats_url)]
        for name, check in self._checks.items():
            optional = name in self._optional_checks
            try:
                detail = await asyncio.wait_for(check(), timeout=5)
                checks.append(CheckResult(name=name, ok=True, detail=detail or "", optional=optional))
            except Exception as exc:
                detail = str(exc) or type(exc).__name__
                checks.append(CheckResult(name=name, ok=False, detail=detail, optional=optional))
        return HealthReply(
            service=self.name,
            version=self.version,
            instance_id=self.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            uptime_s=round(time.time() - self.started_at, 3),
            ok=all(c.ok or c.optional for c in checks),
            checks=checks,
        )


def run_main(service: str, app_module: str) -> None:
    """The entry point of every service: settings, logging, then `<app_module>.build(settings)` serves
    until stopped. The app module is imported only once the settings are known to be valid, so a
    configuration mistake ends the process with the message and exit code 2, never a traceback.
    """
    import uvloop

    settings = _settings_or_exit(service)
    tracing.configure(settings)  # before the logging, whose lines then carry trace ids
    log = configure_logging(settings)
    runtime = _build(app_module, settings)
    runtime.settles_heap = True
    try:
        uvloop.run(runtime.run())  # a faster event loop: every request, publish and query gains
    except HubError as exc:
        log.error("service could not start", error=str(exc))
        raise SystemExit(1) from None
    _exit_stopped()


def run_together(apps: Sequence[tuple[str, str]]) -> None:
    """Several services in this one process (`HUB_LAYOUT=single`): each `(service, app_module)` as `run_main` would
    run it alone, with its own settings, NATS connection(s) and database, so they talk over NATS exactly as separate
    processes do. SIGTERM/SIGINT stop them all gracefully. When one ends by itself (it could not start), the others
    are stopped too and the process exits 1: its supervisor restarts the whole of it.
    """
    import uvloop

    settings = [(_settings_or_exit(service), app_module) for service, app_module in apps]
    process_settings = msgspec.structs.replace(settings[0][0], service="single")
    tracing.configure(process_settings)  # one tracer for the process (OTEL service name `hub-single`)
    log = configure_logging(process_settings)
    runtimes = [_build(app_module, service_settings) for service_settings, app_module in settings]
    for runtime in runtimes:
        runtime.settles_heap = True
    failed = uvloop.run(_serve_together(runtimes))
    for runtime, error in failed:
        log.error("service could not start", service=runtime.name, error=str(error), exc_info=error)
    if failed:
        raise SystemExit(1)
    _exit_stopped()


async def _serve_together(runtimes: list[ServiceRuntime]) -> list[tuple[ServiceRuntime, BaseException]]:
    """Serve every runtime until a signal, or until one of them ends; what each that failed raised."""

    def stop_all() -> None:
        for runtime in runtimes:
            runtime.request_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    serving = {asyncio.ensure_future(_serve_as_itself(runtime)): runtime for runtime in runtimes}
    await asyncio.wait(serving, return_when=asyncio.FIRST_COMPLETED)
    stop_all()
    await asyncio.wait(serving)
    await asyncio.to_thread(tracing.shutdown)  # once every service has stopped: the spans still batched are sent
    return [(serving[task], error) for task in serving if (error := task.exception()) is not None]


async def _serve_as_itself(runtime: ServiceRuntime) -> None:
    # Runs in a task of its own: what it logs (and the tasks it starts, which copy this context) names its service.
    structlog.contextvars.bind_contextvars(service=runtime.name)
    await runtime.serve()


def _exit_stopped() -> None:
    """End the process of a service that has stopped cleanly (requests answered, NATS flushed and closed, database
    closed, spans sent) at once, without the interpreter's teardown: collecting every module and object takes seconds
    on a loaded machine while a restart or the hub's stop waits for it, and a thread some library left running would
    hold the exit up for good."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _settings_or_exit(service: str) -> Settings:
    try:
        return load_settings(service)
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _build(app_module: str, settings: Settings) -> ServiceRuntime:
    build: Callable[[Settings], ServiceRuntime] = importlib.import_module(app_module).build
    return build(settings)


async def _cancel_for_sure(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it to end, cancelling again while it goes on.

    nats-py keeps retrying a first connection inside `connect`, and a cancellation can be lost in there (its
    clean-up catches CancelledError; Python 3.11's wait_for can drop one). Seen in CI: a service waiting for NATS
    ignored SIGTERM."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
