"""The fair-share rules themselves (dispatch_service.fair_share), on made-up standings: which key goes next, in
which order held jobs start, where a waiting job stands, which keys a full window still takes."""

from __future__ import annotations

from dispatch_service.fair_share import (
    Standing,
    ahead_elsewhere,
    fair_order,
    fair_position,
    key_token,
    keys_owed_places,
    ranked,
    standings,
    subject_of,
)
from dispatch_service.store import KeyRun, WaitingKey


def _standing(key: str | None, served: float, unit: float = 1.0, oldest: float = 0.0, **extra: object) -> Standing:
    return Standing(
        api_key_id=key, served_s=served, unit_s=unit, oldest_accepted_at=oldest, at_running_limit=False, **extra
    )  # type: ignore[arg-type]


def test_service_counts_ended_runs_running_ones_at_least_the_mean_and_divides_by_the_weight() -> None:
    waiting = [
        WaitingKey(api_key_id="a", oldest_accepted_at=1.0, waiting=5, request={"weight": 2}),
        WaitingKey(api_key_id="b", oldest_accepted_at=2.0, waiting=1, request={"max_running": 1}),
        WaitingKey(api_key_id=None, oldest_accepted_at=3.0, waiting=1, request={}),
    ]
    running = [
        KeyRun(job_id="a1", api_key_id="a", status="running", started_at=99.5, finished_at=None),  # counts the mean
        KeyRun(job_id="b1", api_key_id="b", status="running", started_at=90.0, finished_at=None),  # counts 10 s
    ]
    by_key = {
        s.api_key_id: s
        for s in standings(waiting, {"a": 3.0}, running, {"": {"mine"}}, mean_run_s=2.0, now=100.0, window_s=60)
    }
    assert by_key["a"].served_s == (3.0 + 2.0) / 2 and by_key["a"].unit_s == 1.0  # weight 2
    assert by_key["b"].served_s == 10.0 and by_key["b"].at_running_limit  # one running, its limit one
    assert by_key[None].served_s == 2.0  # a job this replica started, its row not yet running: one mean run time
    assert by_key["a"].waiting == 5


def test_the_key_with_least_service_goes_first_then_the_longest_waiting_or_only_by_arrival_when_off() -> None:
    keys = [_standing("a", 5.0, oldest=1.0), _standing("b", 0.0, oldest=9.0), _standing("c", 0.0, oldest=3.0)]
    assert [k.api_key_id for k in ranked(keys, {}, fair=True)] == ["c", "b", "a"]
    assert [k.api_key_id for k in ranked(keys, {"c": 1}, fair=True)] == ["b", "c", "a"]  # c holds one already
    assert [k.api_key_id for k in ranked(keys, {}, fair=False)] == ["a", "c", "b"]


def test_held_jobs_take_turns_by_weight_and_keep_their_order_within_a_key() -> None:
    by_key = {"a": _standing("a", 0.0, unit=1.0), "b": _standing("b", 0.0, unit=1 / 3)}  # b weighs 3
    jobs = ["a", "a", "a", "b", "b", "b", "b"]
    assert [jobs[i] + str(i) for i in fair_order(jobs, by_key, fair=True)] == [
        "a0", "b3", "b4", "b5", "a1", "b6", "a2",
    ]  # fmt: skip
    assert fair_order(jobs, by_key, fair=False) == list(range(7))


def test_a_waiting_jobs_place_counts_the_jobs_whose_turn_comes_first() -> None:
    keys = [_standing("a", 10.0, waiting=300), _standing("b", 0.0, waiting=10)]
    assert fair_position(keys, "b", 1) == 1
    assert fair_position(keys, "b", 10) == 10  # b has had 10 s less: its ten jobs go first
    assert fair_position(keys, "a", 1) == 11  # behind b's ten
    assert fair_position(keys, "c", 1) is None


def test_a_full_window_still_takes_the_keys_whose_turn_comes_before_its_last_job() -> None:
    by_key = {"a": _standing("a", 4.0, waiting=300), "b": _standing("b", 0.0, waiting=10)}
    assert keys_owed_places(["a"] * 16, by_key) == {"b"}
    assert keys_owed_places(["a"] * 8 + ["b"] * 10, by_key) == set()  # all of b here, a next after the last
    assert ahead_elsewhere({"a"}, by_key) and not ahead_elsewhere({"a", "b"}, by_key)


def test_each_keys_jobs_have_a_subject_of_their_own() -> None:
    assert subject_of("j1", None) == "hub.jobs.pending.j1"
    token = key_token("key with spaces.and.dots")
    assert subject_of("j1", "key with spaces.and.dots") == f"hub.jobs.key.{token}.j1"
    assert len(token) == 16 and token.isalnum()
