"""The stats service over real NATS: it records generation events published on JetStream, answers log queries,
computes figures on a known data set (hand-computed medians and p95) and exports the log."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from stats_support import JobScript, StatsHub, stats_hub, wait_recorded, wait_until

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.stats import (
    ExportLog,
    FigureRow,
    Figures,
    GenerationRecord,
    GetGeneration,
    LogExport,
    QueryFigures,
    QueryLog,
)
from contracts.runtime.bus import call
from contracts.streams import EVENTS_STREAM, event_subject
from stats_service.consumer import CONSUMER_NAME
from stats_service.merge import JobState, apply_event


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StatsHub]:
    async with stats_hub(tmp_path_factory.mktemp("stats-service")) as hub:
        await hub.start_stats()
        yield hub


# -- the log ------------------------------------------------------------------------------------------------

LOG_DAY = epoch("2026-03-02T00:00:00")
LOG_RANGE = {"since": LOG_DAY, "until": LOG_DAY + 86400}


def log_scripts() -> list[JobScript]:
    at = LOG_DAY + 3600
    scripts = [
        JobScript("log-1", at, prompt="A red Fox in snow", styles=["photo"], instance="comfy-1"),
        JobScript(
            "log-2",
            at + 60,
            outcome="failed",
            prompt="portrait of a 100% happy_dog",
            instance="comfy-2",
            api_key_id="key-2",
        ),
        JobScript("log-3", at + 120, outcome="cancelled", render_type="flux", prompt="city skyline", queue_s=None),
        JobScript(
            "log-4",
            at + 180,
            render_type="flux",
            prompt='=HYPERLINK("http://evil.example")',
            styles=["cinematic", "photo"],
            instance="comfy-2",
            client_name="bot",
        ),
        JobScript(
            "log-5",
            at + 240,
            prompt="red fox again",
            instance="comfy-1",
            api_key_id="key-2",
            retry=True,
            queue_s=3.0,
            run_s=4.5,
            outputs=2,
            output_size=2048,
            seed=123456789012345,
        ),
    ]
    scripts += [JobScript(f"log-f{i:02d}", at + 300 + i * 60, prompt=f"filler {1000 + i} happy dog") for i in range(20)]
    return scripts


@pytest.fixture(scope="module")
async def log_data(hub: StatsHub) -> list[JobScript]:
    scripts = log_scripts()
    await hub.publish_all([event for script in scripts for event in script.events()])
    await wait_recorded(hub, scripts)
    return scripts


async def job_ids(hub: StatsHub, **filters: object) -> list[str]:
    page = await hub.log(**{**LOG_RANGE, **filters}, limit=500)
    assert page.total == len(page.items)
    return [item.job_id for item in page.items]


async def test_the_log_records_every_job_with_its_request_result_and_timings(hub: StatsHub, log_data) -> None:
    page = await hub.log(**LOG_RANGE, limit=500)
    assert page.total == 25
    item = next(i for i in page.items if i.job_id == "log-5")
    start = LOG_DAY + 3600 + 240
    assert (item.status, item.render_type, item.instance, item.api_key_id) == ("completed", "sdxl", "comfy-1", "key-2")
    assert (item.prompt, item.positive_prompt, item.negative_prompt) == (
        "red fox again",
        "red fox again, highly detailed",
        "blurry",
    )
    assert (item.seed, item.width, item.height, item.client_name) == (123456789012345, 512, 512, "tests")
    assert (item.accepted_at, item.started_at, item.finished_at) == (start, start + 3.0, start + 7.5)
    assert (item.queue_wait_ms, item.run_ms) == (3000.0, 4500.0)
    assert (item.bytes_out, [o.output_id for o in item.outputs]) == (4096, ["log-5-out-0", "log-5-out-1"])
    assert (item.attempts, item.retry_reasons) == (2, ["attempt 1 on comfy-0: instance stopped answering"])
    assert item.images_removed is False and item.logged_at == start
    failed = next(i for i in page.items if i.job_id == "log-2")
    assert failed.error == "ComfyUI reported: out of memory" and failed.outputs == []
    one = await call(hub.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id="log-5"))
    assert one == item


async def test_the_log_filters_by_status_render_type_instance_key_style_client_text(hub: StatsHub, log_data) -> None:
    fillers = [f"log-f{i:02d}" for i in range(19, -1, -1)]
    assert await job_ids(hub, status="failed") == ["log-2"]
    assert await job_ids(hub, render_type="flux") == ["log-4", "log-3"]  # newest first
    assert await job_ids(hub, instance="comfy-2") == ["log-4", "log-2"]
    assert await job_ids(hub, instance="MFY-2") == ["log-4", "log-2"]  # part of the name, any case
    everything = await job_ids(hub, text="")
    assert await job_ids(hub, instance="Comfy") == [j for j in everything if j != "log-3"]  # log-3 never ran
    assert await job_ids(hub, api_key_id="key-2") == ["log-5", "log-2"]
    assert await job_ids(hub, style="photo") == ["log-4", "log-1"]
    assert await job_ids(hub, style="cinematic") == ["log-4"]
    assert await job_ids(hub, client_name="bot") == ["log-4"]
    assert await job_ids(hub, text="RED fox") == ["log-5", "log-1"]  # any case, in the prompts
    assert await job_ids(hub, text="highly detailed") == [*fillers, "log-5", "log-4", "log-3", "log-2", "log-1"]
    # LIKE wildcards in the search text are matched literally.
    assert await job_ids(hub, text="100%") == ["log-2"]
    assert await job_ids(hub, text="happy_dog") == ["log-2"]
    assert await job_ids(hub, text="happy dog") == fillers
    assert await job_ids(hub, render_type="sdxl", status="completed") == [*fillers, "log-5", "log-1"]
    assert await job_ids(hub, since=LOG_DAY + 3600 + 60, until=LOG_DAY + 3600 + 181) == ["log-4", "log-3", "log-2"]
    assert await job_ids(hub, render_type="none-such") == []


async def test_the_log_pages_are_stable_and_complete(hub: StatsHub, log_data) -> None:
    pages = [await hub.log(**LOG_RANGE, limit=10, offset=offset) for offset in (0, 10, 20, 30)]
    assert [len(p.items) for p in pages] == [10, 10, 5, 0]
    assert all(p.total == 25 for p in pages)
    seen = [item.job_id for p in pages for item in p.items]
    assert len(seen) == len(set(seen)) == 25
    times = [item.logged_at for p in pages for item in p.items]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    ("subject", "body", "field"),
    [
        (endpoints.Stats.LOG_QUERY.subject, {"since": 10.0, "until": 5.0}, "until"),
        (endpoints.Stats.LOG_QUERY.subject, {"limit": 0}, "limit"),
        (endpoints.Stats.LOG_QUERY.subject, {"stauts": "failed"}, "stauts"),
        (endpoints.Stats.LOG_QUERY.subject, {"status": "exploded"}, "status"),
        (endpoints.Stats.FIGURES.subject, {"group_by": "week"}, "group_by"),
        (endpoints.Stats.FIGURES.subject, {"group_by": "day", "since": 10.0, "until": 10.0}, "until"),
        (endpoints.Stats.EXPORT.subject, {"format": "xlsx"}, "format"),
    ],
)
async def test_bad_queries_get_an_error_naming_the_field(hub: StatsHub, subject: str, body: dict, field: str) -> None:
    reply = await hub.nc.request(subject, json.dumps(body).encode(), timeout=10)
    error = msgspec.json.decode(reply.data)["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)


async def test_an_unknown_job_is_not_found(hub: StatsHub) -> None:
    with pytest.raises(HubError) as raised:
        await call(hub.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id="no-such-job"))
    assert raised.value.code is ErrorCode.NOT_FOUND and raised.value.info.field == "job_id"


async def test_an_undecodable_event_is_dropped_and_does_not_block_the_log(hub: StatsHub) -> None:
    await hub.js.publish(event_subject("poison-1"), b"{this is not an event")
    script = JobScript("after-poison", epoch("2026-03-05T10:00:00"))
    await hub.publish_all(script.events())
    await wait_recorded(hub, [script])

    async def settled() -> bool:
        info = await hub.js.consumer_info(EVENTS_STREAM, CONSUMER_NAME)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_until(settled, what="the consumer to have nothing left")
    assert hub.rows("SELECT count(*) FROM generation WHERE job_id = 'poison-1'") == [(0,)]
    assert "undecodable generation event dropped" in hub.processes[0].log()


async def test_a_job_whose_events_come_one_batch_at_a_time_gets_the_row_of_all_its_events(hub: StatsHub) -> None:
    """Each event alone in its batch: the row is inserted, then updated once per event (only the columns that
    changed are written); it must end as the merge of all its events says."""
    script = JobScript("one-by-one", LOG_DAY + 7200, retry=True, outputs=2, styles=["photo"], queue_s=3.0, run_s=4.5)

    async def settled() -> bool:
        info = await hub.js.consumer_info(EVENTS_STREAM, CONSUMER_NAME)
        return info.num_pending == 0 and info.num_ack_pending == 0

    merged: JobState | None = None
    for event in script.events():
        merged = apply_event(merged, event)
        await hub.publish_all([event])
        await wait_until(settled, what="the event to be recorded")
    await wait_recorded(hub, [script])
    recorded = await call(hub.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id="one-by-one"))
    assert merged is not None and merged.finished_at is not None
    assert recorded == msgspec.convert(msgspec.to_builtins(merged), GenerationRecord)


# -- figures on a known data set ------------------------------------------------------------------------------

FIGURE_RANGE = {"since": epoch("2026-01-05T00:00:00"), "until": epoch("2026-01-09T00:00:00")}


def figure_scripts() -> list[JobScript]:
    """Eight jobs over four days (none on the third); the expected figures below are computed by hand."""

    def job(name: str, when: str, **kw: object) -> JobScript:
        return JobScript(name, epoch(when), **kw)  # type: ignore[arg-type]

    return [
        job("fig-1", "2026-01-05T10:00:00", render_type="fig-a", instance="gpu-1", api_key_id="k1", styles=["photo"],
            queue_s=0.1, run_s=1.0, outputs=1, output_size=1000),
        job("fig-2", "2026-01-05T10:30:00", render_type="fig-a", instance="gpu-1", api_key_id="k1",
            styles=["photo", "vivid"], queue_s=0.3, run_s=2.0, outputs=2, output_size=500),
        job("fig-3", "2026-01-05T11:15:00", render_type="fig-b", instance="gpu-2", api_key_id="k2", outcome="failed",
            queue_s=0.2, run_s=0.5),
        job("fig-4", "2026-01-05T14:00:00", render_type="fig-a", instance="gpu-2", api_key_id="k1", styles=["vivid"],
            queue_s=0.4, run_s=4.0, outputs=1, output_size=2000),
        job("fig-5", "2026-01-06T09:00:00", render_type="fig-b", instance="gpu-1", api_key_id="k2", styles=["photo"],
            queue_s=1.0, run_s=3.0, outputs=1, output_size=1500, give_ms=False),  # durations derived from times
        job("fig-6", "2026-01-06T09:10:00", render_type="fig-b", api_key_id="k2", outcome="cancelled", queue_s=None),
        job("fig-7", "2026-01-06T09:20:00", render_type="fig-a", instance="gpu-2", api_key_id=None, styles=["photo"],
            outcome="failed", queue_s=0.05, run_s=0.1),
        job("fig-8", "2026-01-08T12:00:00", render_type="fig-a", instance="gpu-1", api_key_id="k1", styles=["photo"],
            queue_s=0.7, run_s=6.0, outputs=4, output_size=250),
    ]  # fmt: skip


@pytest.fixture(scope="module")
async def figure_data(hub: StatsHub) -> None:
    scripts = figure_scripts()
    await hub.publish_all([event for script in scripts for event in script.events()])
    await wait_recorded(hub, scripts)


async def figures(hub: StatsHub, group_by: str, **extra: object) -> Figures:
    query = QueryFigures(group_by=group_by, **{**FIGURE_RANGE, **extra})  # type: ignore[arg-type]
    return await call(hub.nc, endpoints.Stats.FIGURES, query)


def check(row: FigureRow, expected: dict[str, object]) -> None:
    actual = msgspec.to_builtins(row)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value), f"{row.key}.{name}: {actual[name]} != {value}"


async def test_figures_by_day_on_a_known_data_set(hub: StatsHub, figure_data) -> None:
    result = await figures(hub, "day")
    assert [r.key for r in result.rows] == ["2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08"]
    day1, day2, day3, day4 = result.rows
    # Day 1: fig-1..4. Queue waits 100, 300, 200, 400 -> sorted 100 200 300 400: p50 at rank 1.5 = 250,
    # p95 at rank 2.85 = 300 + 0.85 * 100 = 385. Run times of the completed jobs 1000 2000 4000: p50 = 2000,
    # p95 at rank 1.9 = 2000 + 0.9 * 2000 = 3800. One failure out of four finished jobs.
    check(day1, {"count": 4, "completed": 3, "failed": 1, "cancelled": 0, "failure_rate": 0.25, "images": 4,
                 "bytes_out": 4000, "queue_wait_p50_ms": 250, "queue_wait_p95_ms": 385, "run_p50_ms": 2000,
                 "run_p95_ms": 3800})  # fmt: skip
    # Day 2: fig-5..7. Queue waits 1000 (fig-5, derived from its event times) and 50 (fig-6 never started):
    # p50 = 525, p95 at rank 0.95 = 50 + 0.95 * 950 = 952.5. One completed run of 3000. 1 failed of 2 finished.
    check(day2, {"count": 3, "completed": 1, "failed": 1, "cancelled": 1, "failure_rate": 0.5, "images": 1,
                 "bytes_out": 1500, "queue_wait_p50_ms": 525, "queue_wait_p95_ms": 952.5, "run_p50_ms": 3000,
                 "run_p95_ms": 3000})  # fmt: skip
    # Day 3 had no job: listed with zeros so a chart has no gap.
    check(day3, {"count": 0, "images": 0, "failure_rate": 0.0})
    assert day3.queue_wait_p50_ms is None and day3.run_p95_ms is None
    check(day4, {"count": 1, "completed": 1, "images": 4, "bytes_out": 1000, "queue_wait_p50_ms": 700,
                 "queue_wait_p95_ms": 700, "run_p50_ms": 6000, "run_p95_ms": 6000})  # fmt: skip
    # All eight: queue waits 50 100 200 300 400 700 1000 -> p50 = 300, p95 at rank 5.7 = 700 + 0.7 * 300 = 910;
    # completed runs 1000 2000 3000 4000 6000 -> p50 = 3000, p95 at rank 3.8 = 4000 + 0.8 * 2000 = 5600.
    assert result.total is not None
    check(result.total, {"count": 8, "completed": 5, "failed": 2, "cancelled": 1, "failure_rate": 2 / 7,
                         "images": 9, "bytes_out": 6500, "queue_wait_p50_ms": 300, "queue_wait_p95_ms": 910,
                         "run_p50_ms": 3000, "run_p95_ms": 5600})  # fmt: skip


async def test_figures_by_render_type_instance_style_and_key(hub: StatsHub, figure_data) -> None:
    by_type = await figures(hub, "render_type")
    assert [r.key for r in by_type.rows] == ["fig-a", "fig-b"]  # largest group first
    # fig-a: fig-1, 2, 4, 7, 8. Queue 50 100 300 400 700 -> p50 300, p95 at 3.8 = 400 + 0.8 * 300 = 640.
    # Completed runs 1000 2000 4000 6000 -> p50 3000, p95 at 2.85 = 4000 + 0.85 * 2000 = 5700.
    check(by_type.rows[0], {"count": 5, "completed": 4, "failed": 1, "failure_rate": 0.2, "images": 8,
                            "queue_wait_p50_ms": 300, "queue_wait_p95_ms": 640, "run_p50_ms": 3000,
                            "run_p95_ms": 5700})  # fmt: skip
    # fig-b: fig-3, 5, 6. Queue 200 1000 -> p50 600, p95 = 200 + 0.95 * 800 = 960.
    check(by_type.rows[1], {"count": 3, "completed": 1, "failed": 1, "cancelled": 1, "failure_rate": 0.5,
                            "images": 1, "queue_wait_p50_ms": 600, "queue_wait_p95_ms": 960,
                            "run_p50_ms": 3000})  # fmt: skip

    by_instance = await figures(hub, "instance")
    assert [r.key for r in by_instance.rows] == ["gpu-1", "gpu-2", "(none)"]
    # gpu-1: queue 100 300 700 1000 -> p50 500, p95 = 700 + 0.85 * 300 = 955; runs 1000 2000 3000 6000 -> 2500, 5550.
    check(by_instance.rows[0], {"count": 4, "completed": 4, "failure_rate": 0.0, "images": 8,
                                "queue_wait_p50_ms": 500, "queue_wait_p95_ms": 955, "run_p50_ms": 2500,
                                "run_p95_ms": 5550})  # fmt: skip
    # gpu-2: fig-3 and fig-7 failed, fig-4 completed: queue 50 200 400 -> p50 200, p95 = 200 + 0.9 * 200 = 380.
    check(by_instance.rows[1], {"count": 3, "completed": 1, "failed": 2, "failure_rate": 2 / 3, "images": 1,
                                "queue_wait_p50_ms": 200, "queue_wait_p95_ms": 380, "run_p50_ms": 4000})  # fmt: skip
    check(by_instance.rows[2], {"count": 1, "cancelled": 1, "failure_rate": 0.0})  # fig-6 never ran

    by_style = await figures(hub, "style")
    assert [r.key for r in by_style.rows] == ["photo", "(none)", "vivid"]  # a tie is sorted by key
    # photo: fig-1, 2, 5, 7, 8. Queue 50 100 300 700 1000 -> p50 300, p95 = 700 + 0.8 * 300 = 940.
    check(by_style.rows[0], {"count": 5, "completed": 4, "failed": 1, "failure_rate": 0.2, "images": 8,
                             "queue_wait_p50_ms": 300, "queue_wait_p95_ms": 940, "run_p50_ms": 2500,
                             "run_p95_ms": 5550})  # fmt: skip
    check(by_style.rows[1], {"count": 2, "failed": 1, "cancelled": 1, "failure_rate": 1.0, "queue_wait_p50_ms": 200})
    # vivid: fig-2, fig-4. Queue 300 400 -> 350, 395; runs 2000 4000 -> 3000, 2000 + 0.95 * 2000 = 3900.
    check(by_style.rows[2], {"count": 2, "completed": 2, "images": 3, "queue_wait_p50_ms": 350,
                             "queue_wait_p95_ms": 395, "run_p50_ms": 3000, "run_p95_ms": 3900})  # fmt: skip

    by_key = await figures(hub, "api_key")
    assert [(r.key, r.count, r.failed) for r in by_key.rows] == [("k1", 4, 0), ("k2", 3, 1), ("(none)", 1, 1)]
    only_k2 = await figures(hub, "render_type", api_key_id="k2")
    assert [(r.key, r.count) for r in only_k2.rows] == [("fig-b", 3)]


async def test_figures_by_hour_and_in_another_time_zone(hub: StatsHub, figure_data) -> None:
    by_hour = await figures(hub, "hour", since=epoch("2026-01-05T10:00:00"), until=epoch("2026-01-05T12:00:00"))
    assert [(r.key, r.count) for r in by_hour.rows] == [("2026-01-05T10:00", 2), ("2026-01-05T11:00", 1)]
    # At UTC-10, the jobs of the morning of 6 January (UTC) still belong to 5 January.
    local_days = {"since": epoch("2026-01-05T10:00:00"), "until": epoch("2026-01-09T10:00:00")}  # midnights at UTC-10
    local = await figures(hub, "day", utc_offset_minutes=-600, **local_days)
    assert [(r.key, r.count) for r in local.rows] == [
        ("2026-01-05", 7),
        ("2026-01-06", 0),
        ("2026-01-07", 0),
        ("2026-01-08", 1),
    ]


# -- export ---------------------------------------------------------------------------------------------------


async def export(hub: StatsHub, fmt: str, **filters: object) -> list[LogExport]:
    """Every part of an export, asking again from `next_offset` until the last part."""
    parts: list[LogExport] = []
    offset = 0
    while True:
        part = await call(
            hub.nc, endpoints.Stats.EXPORT, ExportLog(format=fmt, query=QueryLog(offset=offset, **filters))
        )  # type: ignore[arg-type]
        parts.append(part)
        if part.next_offset is None:
            return parts
        assert part.next_offset == offset + part.rows and part.rows > 0
        offset = part.next_offset


async def test_csv_export_uses_the_log_filters_and_defuses_formulas(hub: StatsHub, log_data) -> None:
    (part,) = await export(hub, "csv", render_type="flux", **LOG_RANGE)
    assert (part.rows, part.total, part.filename.endswith(".csv")) == (2, 2, True)
    rows = list(csv.DictReader(io.StringIO(part.content)))
    assert [r["job_id"] for r in rows] == ["log-4", "log-3"]
    assert rows[0]["prompt"] == '\'=HYPERLINK("http://evil.example")'  # shown as text, never run as a formula
    assert rows[0]["styles"] == "cinematic;photo" and rows[0]["client_name"] == "bot"
    assert rows[1]["status"] == "cancelled" and rows[1]["instance"] == "" and rows[1]["queue_wait_ms"] == ""
    assert rows[0]["accepted_at"] == "2026-03-02T01:03:00.000Z"
    (empty,) = await export(hub, "csv", render_type="none-such")
    assert empty.rows == 0 and empty.content.startswith("job_id,logged_at,status")


async def test_jsonl_export_holds_the_records_of_the_log(hub: StatsHub, log_data) -> None:
    (part,) = await export(hub, "jsonl", api_key_id="key-2", **LOG_RANGE)
    lines = part.content.splitlines()
    records = [msgspec.json.decode(line, type=GenerationRecord) for line in lines]
    page = await hub.log(api_key_id="key-2", **LOG_RANGE)
    assert records == page.items and len(records) == 2


async def test_a_large_export_comes_in_parts_that_each_fit_a_reply(hub: StatsHub) -> None:
    day = epoch("2026-04-01T00:00:00")
    scripts = [JobScript(f"bulk-{i:03d}", day + i, render_type="bulk", prompt=f"{i} " + "x" * 7990, outputs=0)
               for i in range(120)]  # fmt: skip
    await hub.publish_all([e for s in scripts for e in s.events()])
    await wait_recorded(hub, scripts)
    parts = await export(hub, "csv", render_type="bulk")
    assert len(parts) >= 2  # ~2 MB of prompts do not fit one message
    assert all(len(msgspec.json.encode(p)) < hub.nc.max_payload for p in parts)
    text = "".join(p.content for p in parts)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["job_id"] for r in rows) == [s.job_id for s in scripts]  # each row once, one header
    assert all(r["prompt"] == s.prompt for r, s in zip(rows, reversed(scripts), strict=True))
    assert sum(p.rows for p in parts) == 120 and all(p.total == 120 for p in parts)


async def test_the_service_health_reports_the_consumer(hub: StatsHub) -> None:
    from contracts.messages.health import HealthRequest

    health = await call(hub.nc, endpoints.health("stats"), HealthRequest())
    events = next(c for c in health.checks if c.name == "events")
    assert events.ok and "recorded by this replica" in events.detail


async def test_the_stats_database_migrations_all_ran(hub: StatsHub) -> None:
    ran = {name for (name,) in hub.rows("SELECT name FROM migration WHERE app_name = 'stats'")}
    folder = Path(__file__).parents[2] / "stats-service" / "src" / "stats_service" / "migrations"
    files = {p.stem for p in folder.glob("stats_*.py")}
    assert "2026-11-24T14:00:00:000000" in ran and len(ran) == len(files) >= 2
