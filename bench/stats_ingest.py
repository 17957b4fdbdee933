"""How many generation events per second one stats-service replica ingests.

Starts a private nats-server (JetStream) and one stats-service process in a temporary folder, publishes the events
of `--jobs` generations the way the dispatcher does (accepted, queued, started, progress x N, output_stored,
completed, or failed for every tenth job), and measures how fast the replica takes them from its durable consumer,
commits them to its SQLite log and acknowledges them.

  backlog (default): the events wait in the stream while the service is down; then it starts and catches up.
                     The time runs from its first acknowledged batch to its last, so start-up is not counted.
  live:              the service runs while the events are published as fast as possible; the time runs from
                     the first publish to the last acknowledgement.

Printed: events ingested per second (every event of the stream; progress events are acknowledged without a
database write), the part of them written to the log per second, and jobs per second.

    .venv/bin/python bench/stats_ingest.py --jobs 5000
    .venv/bin/python bench/stats_ingest.py --jobs 2000 --mode live --progress 20

BENCH_LOG_LEVEL=debug keeps the service's per-batch log lines (in the temporary folder's stats.log);
BENCH_PROFILE="-m cProfile -o /tmp/stats.prof" runs the service under a profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
from nats.js import JetStreamContext

from contracts.messages.events import (
    JobAccepted,
    JobCompleted,
    JobFailed,
    JobProgress,
    JobQueued,
    JobStarted,
    OutputStored,
)
from contracts.messages.jobs import GenerationRequest, OutputFile, Timings
from contracts.runtime.bus import ensure_stream
from contracts.streams import EVENTS, EVENTS_STREAM, event_subject
from hub_deploy.natsserver import NatsServer

CONSUMER = "hub-stats-log"  # stats_service.consumer.CONSUMER_NAME (not imported: the bench talks to a process)
PUBLISH_WINDOW = 256  # publishes awaited together


def job_events(index: int, progress: int, now: float) -> list[msgspec.Struct]:
    job_id = f"bench-{index:07d}"
    at = now - 3600 + index * 0.01
    instance = f"comfy-{index % 4}"
    out = OutputFile(output_id=f"{job_id}-o", content_type="image/png", size=1_500_000, filename="hub_00001_.png")
    timings = Timings(accepted_at=at, started_at=at + 0.5, finished_at=at + 4.5, queue_wait_ms=500, run_ms=4000)
    events: list[msgspec.Struct] = [
        JobAccepted(
            job_id=job_id,
            seq=1,
            at=at,
            request=GenerationRequest(prompt=f"benchmark image {index}", api_key_id="bench", client_name="bench"),
            render_type="sdxl",
            positive_prompt=f"benchmark image {index}, highly detailed, cinematic light",
            negative_prompt="blurry, low quality",
            styles=["photo", "cinematic"],
            seed=index,
            width=1024,
            height=1024,
        ),
        JobQueued(job_id=job_id, seq=2, at=at + 0.01, position=1),
        JobStarted(job_id=job_id, seq=3, at=at + 0.5, instance=instance, attempt=1, comfy_prompt_id=f"p{index}"),
    ]
    events += [
        JobProgress(
            job_id=job_id, seq=4 + step, at=at + 0.5 + step * 0.1, instance=instance, value=step + 1, max=progress
        )
        for step in range(progress)
    ]
    seq = 4 + progress
    if index % 10 == 9:
        events.append(JobFailed(job_id=job_id, seq=seq, at=at + 4.5, instance=instance, error="out of memory",
                                timings=timings))  # fmt: skip
    else:
        events.append(OutputStored(job_id=job_id, seq=seq, at=at + 4.4, instance=instance, output=out))
        events.append(JobCompleted(job_id=job_id, seq=seq + 1, at=at + 4.5, instance=instance, outputs=[out],
                                   timings=timings))  # fmt: skip
    return events


def all_events(jobs: int, progress: int) -> list[msgspec.Struct]:
    """The events of `jobs` jobs, those of neighbouring jobs interleaved as on a busy hub."""
    now = time.time()
    per_job = [job_events(i, progress, now) for i in range(jobs)]
    sequence: list[msgspec.Struct] = []
    for start in range(0, jobs, 8):
        group = per_job[start : start + 8]
        for step in range(max(len(e) for e in group)):
            sequence += [events[step] for events in group if step < len(events)]
    return sequence


async def publish_all(js: JetStreamContext, events: list[msgspec.Struct]) -> None:
    encode = msgspec.json.encode
    for start in range(0, len(events), PUBLISH_WINDOW):
        window = events[start : start + PUBLISH_WINDOW]
        await asyncio.gather(
            *(js.publish(event_subject(e.job_id), encode(e)) for e in window)  # type: ignore[attr-defined]
        )


def start_stats(nats_url: str, data_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_NATS_URL=nats_url,
        HUB_DATA_DIR=str(data_dir),
        HUB_LOG_FORMAT="json",
        HUB_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
    )
    command = [sys.executable, *os.environ.get("BENCH_PROFILE", "").split(), "-m", "stats_service"]
    return subprocess.Popen(command, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


async def acked(js: JetStreamContext) -> tuple[int, int] | None:
    """(events acknowledged, events still to do), or None before the service created its consumer."""
    try:
        info = await js.consumer_info(EVENTS_STREAM, CONSUMER)
    except nats.js.errors.NotFoundError:
        return None
    return info.ack_floor.stream_seq, info.num_pending + info.num_ack_pending  # the stream holds only our events


async def wait_for_consumer(js: JetStreamContext) -> None:
    """The consumer exists once the service has started."""
    for _ in range(3000):
        if await acked(js) is not None:
            return
        await asyncio.sleep(0.02)
    raise SystemExit("the stats service did not create its consumer within a minute")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--progress", type=int, default=10, help="progress events per job (no database write)")
    parser.add_argument("--mode", choices=("backlog", "live"), default="backlog")
    args = parser.parse_args()

    events = all_events(args.jobs, args.progress)
    written = sum(1 for e in events if not isinstance(e, JobProgress))  # progress changes nothing in the log
    with tempfile.TemporaryDirectory(prefix="stats-bench-") as folder:
        root = Path(folder)
        server = NatsServer(root / "jetstream", log_file=root / "nats-server.log")
        server.start()
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_stream(js, EVENTS, 1)
        process: subprocess.Popen[bytes] | None = None
        try:
            if args.mode == "backlog":
                began = time.perf_counter()
                await publish_all(js, events)
                print(f"published {len(events)} events in {time.perf_counter() - began:.1f} s (service down)")
            process = start_stats(server.url, root / "data", root / "stats.log")
            start_mark: tuple[float, int] | None = None
            if args.mode == "live":
                await wait_for_consumer(js)
                start_mark = (time.perf_counter(), 0)
                publisher = asyncio.create_task(publish_all(js, events))
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"the stats service exited early; see {root / 'stats.log'}")
                state = await acked(js)
                now = time.perf_counter()
                if state is not None:
                    done, left = state
                    if start_mark is None and done > 0:
                        start_mark = (now, done)
                    if done >= len(events) and left == 0:
                        break
                await asyncio.sleep(0.01)
            if args.mode == "live":
                await publisher
            assert start_mark is not None
            elapsed = now - start_mark[0]
            share = (len(events) - start_mark[1]) / len(events)  # the part of the work inside the timed span
            print(f"mode={args.mode} jobs={args.jobs} events={len(events)} ({written} recorded, the rest progress)")
            print(
                f"one replica ingests {len(events) * share / elapsed:,.0f} events/s "
                f"({written * share / elapsed:,.0f} recorded in the log/s, {args.jobs * share / elapsed:,.0f} jobs/s) "
                f"over {elapsed:.2f} s"
            )
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
            await nc.close()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
