"""The merge of a job's events into its log row, and the figure arithmetic: pure functions, checked exhaustively."""

from __future__ import annotations

import itertools
import random
import statistics

import msgspec
import pytest
from stats_support import JobScript

from contracts.messages.events import JobCompleted, JobProgress, JobQueued, JobStarted, OutputStored
from contracts.messages.jobs import OutputFile, Timings
from stats_service.figures import FigureInput, compute_figures, percentile
from stats_service.merge import JobState, apply_event

T0 = 1_767_600_000.0


def merged(events) -> JobState:  # type: ignore[no-untyped-def]
    state = None
    for event in events:
        state = apply_event(state, event)
    assert state is not None
    return state


def recorded(events) -> list[object]:  # type: ignore[no-untyped-def]
    """What ends up on the row, progress events dropped as the consumer's filter drops them."""
    return [e for e in events if not isinstance(e, JobProgress)]


def test_every_order_of_a_jobs_events_gives_the_same_row() -> None:
    events = recorded(JobScript("job-perm", T0, outputs=2, progress_steps=0).events())
    assert len(events) == 6  # accepted, queued, started, 2 x output_stored, completed: 720 orders
    expected = merged(events)
    for order in itertools.permutations(events):
        assert merged(order) == expected


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
def test_shuffled_and_redelivered_events_give_the_same_row(outcome: str) -> None:
    script = JobScript(f"job-{outcome}", T0, outcome=outcome, retry=True, outputs=3, progress_steps=3)
    events = script.events()
    expected = merged(events)
    rng = random.Random(outcome)
    for _ in range(300):
        delivered = events + rng.sample(events, k=rng.randint(0, len(events)))  # some events twice
        rng.shuffle(delivered)
        assert merged(delivered) == expected


def test_the_row_of_a_retried_job_that_completed() -> None:
    script = JobScript("job-r", T0, retry=True, queue_s=4.0, run_s=6.0, outputs=2, output_size=300, seed=99)
    state = merged(reversed(script.events()))  # the worst order: the final event first
    assert state.status == "completed"
    assert state.instance == "comfy-1"  # where the job ran last, not the instance that failed
    assert state.attempts == 2
    assert state.retry_reasons == ["attempt 1 on comfy-0: instance stopped answering"]
    assert (state.render_type, state.prompt, state.seed) == ("sdxl", "a lighthouse at dusk", 99)
    assert state.positive_prompt == "a lighthouse at dusk, highly detailed"
    assert (state.accepted_at, state.started_at, state.finished_at) == (T0, T0 + 4.0, T0 + 10.0)
    assert (state.queue_wait_ms, state.run_ms) == (4000.0, 6000.0)
    assert [o.output_id for o in state.outputs] == ["job-r-out-0", "job-r-out-1"]
    assert (state.output_count, state.bytes_out) == (2, 600)
    assert state.logged_at == T0


def test_an_older_event_never_overrides_a_newer_state() -> None:
    started = JobStarted(job_id="j", seq=3, at=T0 + 1, instance="c1", attempt=1, comfy_prompt_id="p")
    queued = JobQueued(job_id="j", seq=2, at=T0 + 0.5)
    state = merged([started, queued])
    assert (state.status, state.status_seq) == ("running", 3)
    # A final state is never undone, not even by a non-final event with a higher seq.
    done = JobCompleted(job_id="j", seq=5, at=T0 + 3, instance="c1", outputs=[], timings=Timings())
    late = JobProgress(job_id="j", seq=6, at=T0 + 3.1, instance="c1", value=9, max=10)
    assert merged([started, done, late]).status == "completed"


def test_durations_are_derived_from_the_event_times_when_the_final_event_does_not_give_them() -> None:
    script = JobScript("job-d", T0, queue_s=2.0, run_s=3.0, give_ms=False)
    state = merged(script.events())
    assert (state.queue_wait_ms, state.run_ms) == (2000.0, 3000.0)
    # A job cancelled while queued never started: no queue wait, no run time.
    cancelled = merged(JobScript("job-c", T0, outcome="cancelled", queue_s=None, give_ms=False).events())
    assert (cancelled.status, cancelled.queue_wait_ms, cancelled.run_ms) == ("cancelled", None, None)
    assert cancelled.error == "cancelled by the caller"


def test_what_completed_says_about_an_output_wins_over_output_stored() -> None:
    early = OutputFile(output_id="o1", content_type="image/png", size=10, filename="a.png")
    final = OutputFile(output_id="o1", content_type="image/png", size=10, filename="a.png", width=64, height=64)
    stored = OutputStored(job_id="j", seq=4, at=T0, output=early)
    completed = JobCompleted(job_id="j", seq=5, at=T0, outputs=[final], timings=Timings())
    assert merged([stored, completed]).outputs == [final]
    assert merged([completed, stored]).outputs == [final]


def test_a_redelivered_event_changes_nothing() -> None:
    events = recorded(JobScript("job-x", T0).events())
    state = merged(events)
    before = msgspec.structs.replace(state)
    for event in events:
        apply_event(state, event)
    assert state == before


# -- figures ----------------------------------------------------------------------------------------


def test_percentiles_interpolate_between_the_closest_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    # Hand-computed: n=4, p50 at rank 1.5 -> 2 + 0.5 * (3 - 2); p95 at rank 2.85 -> 3 + 0.85 * (4 - 3).
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    # n=5: p50 is the middle value; p95 at rank 3.8 -> 40 + 0.8 * (100 - 40).
    assert percentile([10.0, 20.0, 30.0, 40.0, 100.0], 50) == 30.0
    assert percentile([10.0, 20.0, 30.0, 40.0, 100.0], 95) == pytest.approx(88.0)
    # The same definition as Python's statistics.quantiles(method="inclusive").
    rng = random.Random(5)
    for size in (2, 3, 10, 101):
        values = sorted(rng.uniform(0, 1000) for _ in range(size))
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for p in (5, 50, 95, 99):
            assert percentile(values, p) == pytest.approx(cuts[p - 1])


def test_figures_group_styles_fill_empty_days_and_count_failures_over_finished_jobs() -> None:
    day = 86400.0
    rows = [
        FigureInput(logged_at=T0, status="completed", styles=["a", "b"], queue_wait_ms=10, run_ms=100, output_count=2),
        FigureInput(logged_at=T0 + 60, status="failed", styles=["a"], queue_wait_ms=30, run_ms=5),
        FigureInput(logged_at=T0 + 2 * day, status="running", styles=[], queue_wait_ms=20),
    ]
    by_style = compute_figures(rows, "style")
    assert [(r.key, r.count) for r in by_style.rows] == [("a", 2), ("(none)", 1), ("b", 1)]
    a = by_style.rows[0]
    assert (a.completed, a.failed, a.failure_rate, a.images) == (1, 1, 0.5, 2)
    assert (a.run_p50_ms, a.queue_wait_p50_ms) == (100, 20)  # run time over completed jobs only
    assert by_style.total is not None and by_style.total.count == 3  # a job counts once in the total
    by_day = compute_figures(rows, "day")
    assert [(r.key, r.count) for r in by_day.rows] == [("2026-01-05", 2), ("2026-01-06", 0), ("2026-01-07", 1)]
    assert by_day.rows[1].failure_rate == 0.0 and by_day.rows[1].run_p50_ms is None
    assert by_day.rows[2].failure_rate == 0.0  # a running job is neither a success nor a failure yet
