"""Helpers of the stats-service tests (no tests here): a private NATS + stats process, scripted generation events
published the way the dispatcher publishes them, and a stand-in for the dispatcher's output deletion."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from harness import ServiceProcess, hub_env
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import endpoints, subjects
from contracts.envelope import Reply
from contracts.messages import events as kinds  # the kinds of generation event
from contracts.messages.jobs import DeletedOutputs, DeleteOutputs, GenerationRequest, OutputFile, Timings
from contracts.messages.stats import LogPage, QueryLog
from contracts.runtime.bus import call, ensure_stream
from contracts.streams import EVENTS, event_subject
from hub_deploy.natsserver import NatsServer

Event = Any  # one of the GenerationEvent kinds


async def publish(js: JetStreamContext, event: Event) -> None:
    """Publish as the dispatcher does: on the job's event subject, JSON-encoded (a stored, acknowledged publish)."""
    await js.publish(event_subject(event.job_id), msgspec.json.encode(event))


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or check}")
        await asyncio.sleep(0.05)


@dataclass
class JobScript:
    """The events of one job, with times and durations chosen by the test (seconds since `accepted_at`)."""

    job_id: str
    accepted_at: float
    outcome: str = "completed"  # completed | failed | cancelled
    render_type: str = "sdxl"
    prompt: str = "a lighthouse at dusk"
    styles: list[str] = field(default_factory=list)
    instance: str | None = "comfy-1"
    api_key_id: str | None = "key-1"
    client_name: str | None = "tests"
    seed: int = 7
    queue_s: float | None = 1.0  # None: never started (e.g. cancelled while queued)
    run_s: float = 2.0
    outputs: int = 1
    output_size: int = 1000
    retry: bool = False  # a first attempt fails on comfy-0 and is retried on `instance`
    progress_steps: int = 2
    give_ms: bool = True  # False: the final timings carry only the times; the stats service derives the durations

    @property
    def started_at(self) -> float | None:
        return None if self.queue_s is None else self.accepted_at + self.queue_s

    @property
    def finished_at(self) -> float:
        started = self.started_at
        return (started + self.run_s) if started is not None else self.accepted_at + 0.5

    def output_files(self) -> list[OutputFile]:
        return [
            OutputFile(
                output_id=f"{self.job_id}-out-{i}",
                content_type="image/png",
                size=self.output_size,
                filename=f"hub_{i:05d}_.png",
                width=512,
                height=512,
            )
            for i in range(self.outputs if self.outcome == "completed" else 0)
        ]

    def events(self) -> list[Event]:
        """Every event of the job in the order the dispatcher publishes them, with increasing seq."""
        seq = iter(range(1, 1000))

        def event(kind: Callable[..., Event], at: float, **fields: Any) -> Event:
            return kind(job_id=self.job_id, seq=next(seq), at=at, **fields)

        request = GenerationRequest(
            prompt=self.prompt, api_key_id=self.api_key_id, client_name=self.client_name, seed=self.seed
        )
        out: list[Event] = [
            event(
                kinds.JobAccepted,
                self.accepted_at,
                request=request,
                render_type=self.render_type,
                positive_prompt=f"{self.prompt}, highly detailed",
                negative_prompt="blurry",
                styles=list(self.styles),
                seed=self.seed,
                width=512,
                height=512,
            ),
            event(kinds.JobQueued, self.accepted_at + 0.001, position=1),
        ]
        started = self.started_at
        if started is not None:
            attempt = 1
            if self.retry:
                out.append(
                    event(kinds.JobStarted, started - 0.5, instance="comfy-0", attempt=1, comfy_prompt_id="p-first")
                )
                reason = "instance stopped answering"
                out.append(event(kinds.JobRetrying, started - 0.2, instance="comfy-0", attempt=1, reason=reason))
                attempt = 2
            prompt_id = f"p-{self.job_id}"
            out.append(
                event(kinds.JobStarted, started, instance=self.instance, attempt=attempt, comfy_prompt_id=prompt_id)
            )
            for step in range(self.progress_steps):
                at = started + 0.01 * (step + 1)
                out.append(
                    event(kinds.JobProgress, at, instance=self.instance, value=step + 1, max=self.progress_steps)
                )
            for output in self.output_files():
                out.append(event(kinds.OutputStored, self.finished_at - 0.01, instance=self.instance, output=output))
        timings = Timings(
            accepted_at=self.accepted_at,
            started_at=started,
            finished_at=self.finished_at,
            queue_wait_ms=(self.queue_s * 1000 if self.queue_s is not None else None) if self.give_ms else None,
            run_ms=(self.run_s * 1000 if started is not None else None) if self.give_ms else None,
        )
        final = {"timings": timings, "instance": self.instance if started is not None else None}
        if self.outcome == "completed":
            out.append(event(kinds.JobCompleted, self.finished_at, **final, outputs=self.output_files()))
        elif self.outcome == "failed":
            out.append(event(kinds.JobFailed, self.finished_at, **final, error="ComfyUI reported: out of memory"))
        else:
            out.append(event(kinds.JobCancelled, self.finished_at, **final, reason="cancelled by the caller"))
        return out


@dataclass
class DispatcherStandIn:
    """Stands in for the dispatcher's `Dispatch.OUTPUTS_DELETE` (which it does not answer yet): a real subscriber
    in the dispatcher's queue group over real NATS, holding a set of stored output ids, recording every request."""

    nc: NatsClient
    stored: set[str]
    requests: list[list[str]] = field(default_factory=list)
    _sub: Any = None

    @property
    def asked(self) -> list[str]:
        return [output_id for batch in self.requests for output_id in batch]

    async def start(self) -> DispatcherStandIn:
        async def answer(msg: Msg) -> None:
            ids = msgspec.json.decode(msg.data, type=DeleteOutputs).output_ids
            self.requests.append(ids)
            deleted = [i for i in ids if i in self.stored]
            self.stored -= set(deleted)
            reply = Reply(result=DeletedOutputs(deleted=deleted, missing=[i for i in ids if i not in deleted]))
            await msg.respond(msgspec.json.encode(reply))

        self._sub = await self.nc.subscribe(
            endpoints.Dispatch.OUTPUTS_DELETE.subject, queue=subjects.queue_group("dispatch"), cb=answer
        )
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            await self.nc.flush()
            self._sub = None


@dataclass
class StatsHub:
    """A private nats-server and stats-service processes sharing one data folder."""

    root: Path
    server: NatsServer
    nc: NatsClient
    js: JetStreamContext
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.root / "data" / "stats.sqlite3"

    async def start_stats(self, **env: str) -> ServiceProcess:
        proc = ServiceProcess(
            name="stats",
            env=hub_env(self.server.url, self.root / "data", **env),
            log_path=self.root / f"stats-{len(self.processes)}.log",
        )
        proc.start()
        self.processes.append(proc)
        await proc.wait_healthy(self.nc)
        return proc

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the stats database directly (a test looks at what was really stored)."""
        if not self.database.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as db:
            return db.execute(sql, args).fetchall()

    async def log(self, **filters: Any) -> LogPage:
        return await call(self.nc, endpoints.Stats.LOG_QUERY, QueryLog(**filters))

    async def publish_all(self, events: list[Event]) -> None:
        for event in events:
            await publish(self.js, event)


@contextlib.asynccontextmanager
async def stats_hub(root: Path) -> AsyncIterator[StatsHub]:
    server = NatsServer(root / "jetstream", log_file=root / "nats-server.log")
    server.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await ensure_stream(js, EVENTS, 1)  # as the dispatcher would; the stats service does the same at start
    hub = StatsHub(root=root, server=server, nc=nc, js=js)
    try:
        yield hub
    finally:
        for proc in hub.processes:
            proc.kill()
        await nc.close()
        server.stop()


async def wait_recorded(hub: StatsHub, scripts: list[JobScript], *, timeout_s: float = 30.0) -> None:
    """Wait until the stats database holds every job of `scripts` in its final status."""
    expected = {s.job_id: s.outcome for s in scripts}

    async def done() -> bool:
        found: dict[str, str] = {}
        ids = list(expected)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(hub.rows(f"SELECT job_id, status FROM generation WHERE job_id IN ({marks})", *chunk))
        return found == expected

    await wait_until(done, timeout_s=timeout_s, what=f"{len(expected)} jobs recorded in their final status")
