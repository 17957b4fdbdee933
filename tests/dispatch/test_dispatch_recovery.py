"""Nothing is lost: jobs survive a kill -9 of the dispatcher mid-burst and a restart of NATS itself."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from dispatch_support import Hub, add_instance, checkpoint_of, job, submit, wait_final, wait_for
from doubles.comfyui import ComfyUIDouble

from contracts.errors import HubError
from contracts.messages.jobs import SubmitReply
from dispatch_service.replica import take_identity
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow

# The take-over time is long: only a replica that knows its own leases can start anything soon after.
SLOW_TAKEOVER = {"HUB_DISPATCH_TAKEOVER_S": "60", "HUB_DISPATCH_STALL_TIMEOUT_S": "20"}


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def start_hub(private_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    """Starts registry, prompt and dispatch on the test's own NATS with the settings given, and waits until they
    are healthy; after the test, every process of the hub is killed and its connection closed."""
    hubs: list[Hub] = []

    async def start(**env: str) -> Hub:
        data = tmp_path / "data"
        data.mkdir(parents=True, exist_ok=True)
        nc = await nats.connect(private_nats.url, max_reconnect_attempts=-1)
        hubs.append(hub := Hub(nats_url=private_nats.url, data_dir=data, nc=nc))
        await hub.start_all(**env)
        return hub

    yield start
    for hub in hubs:
        hub.stop_all()
        await hub.nc.close()


@pytest.fixture
async def comfyui(start_hub: object) -> AsyncIterator[Callable[..., Awaitable[ComfyUIDouble]]]:
    """Starts a ComfyUI double (of `kind`) holding the shipped checkpoint and registers it as the instance `name`, or,
    given the `port` of one that went away, starts it there (the same instance, a new ComfyUI). Each is stopped after
    the test, before the hub (this fixture depends on start_hub for that order)."""
    doubles: list[ComfyUIDouble] = []

    async def start(
        hub: Hub, name: str, work_seconds: float, port: int | None = None, kind: type[ComfyUIDouble] = ComfyUIDouble
    ) -> ComfyUIDouble:
        checkpoints = [await checkpoint_of(hub.nc)]
        doubles.append(double := kind(name=name, models={"checkpoints": checkpoints}, work_seconds=work_seconds))
        await double.start(port or 0)
        if port is None:
            await add_instance(hub.nc, double, name)
        return double

    yield start
    for double in doubles:
        await double.stop()


async def running(hub: Hub, prompt: str, seed: int) -> SubmitReply:
    """A job submitted and, once this returns, running."""
    reply = await submit(hub.nc, prompt, seed=seed)
    await wait_for(hub.nc, reply.job_id, {"running"})
    return reply


async def test_every_job_of_a_burst_ends_after_the_dispatcher_is_killed(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    hub = await start_hub()
    doubles = [await comfyui(hub, f"k{i}", work_seconds=0.3) for i in range(3)]
    await asyncio.sleep(0.5)
    replies = await asyncio.gather(*(submit(hub.nc, f"survivor {i}", seed=i) for i in range(30)))

    # Kill -9 once about a third of the burst is done, while jobs are running on every instance.
    deadline = time.monotonic() + 30
    while sum(len(d.executed_prompt_ids) for d in doubles) < 10:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    hub.processes["dispatch"].kill()
    killed_at = time.monotonic()
    await asyncio.sleep(0.5)
    restarted = hub.start("dispatch")
    await restarted.wait_healthy(hub.nc)

    views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in replies]
    # Only the jobs that did not complete, with their whole error (a list of all 30 was cut off by pytest).
    unfinished = [(v.job_id, v.status, v.error, v.attempts) for v in views if v.status != "completed"]
    told = [line for line in restarted.log().splitlines() if any(u[0] in line for u in unfinished)]
    assert not unfinished, (unfinished, told[-20:])
    assert all(len(v.outputs) == 1 for v in views)
    # Jobs running when the dispatcher died were followed on ComfyUI by the new one (attempt 1, run once) or, when
    # ComfyUI did not have their prompt yet, ran again (attempt 2): ComfyUI never ran one more often than that.
    runs = Counter(p.rsplit("-", 1)[0] for d in doubles for p in d.executed_prompt_ids)
    assert all(1 <= runs[v.job_id] <= v.attempts for v in views), [(runs[v.job_id], v.attempts) for v in views]
    assert time.monotonic() - killed_at < 45


async def test_queued_jobs_survive_a_restart_of_nats(
    private_nats: NatsServer, start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    hub = await start_hub()
    double = await comfyui(hub, "later", work_seconds=0.05)
    await asyncio.sleep(0.5)  # probed once: its capabilities are known
    await double.go_down()  # the only instance is down: jobs wait in the stream
    await asyncio.sleep(0.5)
    replies = await asyncio.gather(*(submit(hub.nc, f"patient {i}", seed=i) for i in range(5)))
    assert {r.status for r in replies} == {"queued"}

    private_nats.stop()  # NATS goes away with the jobs in its file store...
    await asyncio.sleep(1.0)
    private_nats.start()  # ...and comes back on the same port and store
    await double.go_up()

    views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in replies]
    assert [v.status for v in views] == ["completed"] * 5, [(v.status, v.error) for v in views]


async def test_an_idle_dispatcher_places_jobs_again_after_nats_was_away(
    private_nats: NatsServer, start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """NATS away while an instance is free: taking a slot fails meanwhile (the dispatcher looks for jobs of dead
    dispatchers now and then, and takes a slot first); the placing loop rides that out (before: it crashed, and
    no job ran again until the dispatcher was restarted)."""
    hub = await start_hub()
    await comfyui(hub, "idle", work_seconds=0.05)
    await asyncio.sleep(1.0)
    private_nats.stop()
    await asyncio.sleep(6.0)  # several looks for taken-over jobs (every 1.5 s here) while NATS is away
    private_nats.start()
    deadline = time.monotonic() + 30
    while True:  # until the dispatcher has reconnected and answers again
        try:
            reply = await submit(hub.nc, "after the outage", seed=1)
            break
        except HubError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    view = await wait_final(hub.nc, reply.job_id, timeout_s=60)
    assert view.status == "completed", (view.status, view.error, hub.processes["dispatch"].log()[-3000:])


async def test_a_restarted_dispatcher_runs_the_job_it_died_with_first_and_at_once(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    hub = await start_hub(**SLOW_TAKEOVER)
    double = await comfyui(hub, "only", work_seconds=2)
    await asyncio.sleep(0.5)
    first = await running(hub, "the one that was running", seed=1)
    behind = [await submit(hub.nc, f"waiting {i}", seed=2 + i) for i in range(2)]

    hub.processes["dispatch"].kill()
    killed_at = time.time()
    # ComfyUI went down with it (a new one on the same address): the prompt is lost there, so the job runs again
    # (one still on ComfyUI is followed there instead: see the adoption test below).
    port = double.port
    await double.stop()
    double = await comfyui(hub, "only", work_seconds=2, port=port)
    restarted = hub.start("dispatch", **SLOW_TAKEOVER)
    await restarted.wait_healthy(hub.nc)
    healthy_at = time.monotonic()
    while first.job_id + "-2" not in double.executed_prompt_ids:
        assert time.monotonic() - healthy_at < 15, (double.executed_prompt_ids, restarted.log())
        await asyncio.sleep(0.05)

    views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in (first, *behind)]
    assert [v.status for v in views] == ["completed"] * 3, [(v.status, v.error) for v in views]
    # Run again first, before the jobs that waited behind it, on the attempt after the crash.
    assert double.executed_prompt_ids == [first.job_id + "-2", *(r.job_id + "-1" for r in behind)]
    done = views[0]
    assert done.attempts == 2
    # Its timings are those of the run that produced the result, and the total from acceptance.
    assert done.timings.started_at >= killed_at
    assert done.timings.run_ms < done.timings.total_ms
    assert done.timings.total_ms == pytest.approx((done.timings.finished_at - done.timings.accepted_at) * 1000, abs=1)


async def killed_and_restarted_then_run_once(
    hub: Hub, double: ComfyUIDouble, reply: SubmitReply, *, ran_before: tuple[str, ...] = (), **env: str
) -> None:
    """kill -9 of the dispatcher, restarted: the job ends completed within 10 s of the restart, ComfyUI ran it once
    (after the prompts `ran_before`)."""
    hub.processes["dispatch"].kill()
    restarted = hub.start("dispatch", **env)
    await restarted.wait_healthy(hub.nc)
    healthy_at = time.monotonic()
    view = await wait_final(hub.nc, reply.job_id, timeout_s=90)
    assert view.status == "completed", (view.status, view.error)
    assert time.monotonic() - healthy_at < 10, restarted.log()
    assert double.executed_prompt_ids == [*ran_before, reply.job_id + "-1"]
    assert len(view.outputs) == 1


@pytest.mark.parametrize("strategy", ["pull", "pull_affinity", "round_robin"])
@pytest.mark.parametrize("pause", ["HUB_TEST_PAUSE_BEFORE_ADMIT_S", "HUB_TEST_PAUSE_AFTER_FETCH_S"])
async def test_a_job_fetched_but_not_yet_placed_by_a_killed_dispatcher_runs_at_once_after_its_restart(
    start_hub: Callable[..., Awaitable[Hub]],
    comfyui: Callable[..., Awaitable[ComfyUIDouble]],
    strategy: str,
    pause: str,
):
    """kill -9 after the dispatcher fetched a job and before it placed it (held there by a test pause): JetStream
    redelivers that message only after the take-over time (chaos: stalls of ~28 s before). Paused before its row is
    read, the lease taken for it (the slot reserved for the fetch; pull_affinity, round_robin: the job's claim) names
    it, so the restarted replica hands it back at once. Paused before any lease names it (between the fetch's answer
    and the lease's write), the restarted replica finds it from the job table: waiting, delivered, named in no
    lease."""
    env = {**SLOW_TAKEOVER, "HUB_DISPATCH_STRATEGY": strategy}
    hub = await start_hub(**env, **{pause: "600"})
    double = await comfyui(hub, "only", work_seconds=0.2)
    await asyncio.sleep(0.5)
    reply = await submit(hub.nc, "fetched, then the dispatcher died", seed=1)
    await asyncio.sleep(2)  # fetched and paused
    assert not double.executed_prompt_ids
    await killed_and_restarted_then_run_once(hub, double, reply, **env)


ROUND_ROBIN = {**SLOW_TAKEOVER, "HUB_DISPATCH_STRATEGY": "round_robin"}


async def bound_behind_a_running_job(
    hub: Hub, comfyui: Callable[..., Awaitable[ComfyUIDouble]], work_seconds: float
) -> tuple[ComfyUIDouble, SubmitReply, SubmitReply]:
    """round_robin, one instance of one slot: a job running there and one fetched and bound to it, waiting for its
    slot (in the dispatcher's memory, its message kept alive): the double, the running job and the bound one."""
    double = await comfyui(hub, "only", work_seconds=work_seconds)
    await asyncio.sleep(0.5)
    first = await running(hub, "running on the only slot", seed=1)
    bound = await submit(hub.nc, "bound behind it", seed=2)
    await asyncio.sleep(1)  # fetched and bound to the busy instance
    assert (await job(hub.nc, bound.job_id)).status == "queued", "the first job ended too soon: nothing was bound"
    return double, first, bound


async def test_a_round_robin_job_bound_to_its_busy_instance_runs_at_once_after_a_kill_and_restart(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """round_robin: a job bound to an instance whose slot is busy waits in the dispatcher's memory. kill -9: its claim
    (a lease naming its message, as pull_affinity's window) lets the restarted replica hand it back at once, so it
    runs after the running job (followed on ComfyUI), not after the take-over time (60 s)."""
    hub = await start_hub(**ROUND_ROBIN)
    double, first, bound = await bound_behind_a_running_job(hub, comfyui, work_seconds=3)
    await killed_and_restarted_then_run_once(hub, double, bound, ran_before=(first.job_id + "-1",), **ROUND_ROBIN)


async def test_a_live_round_robin_replica_keeps_its_bound_job_when_another_replica_starts(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """A replica starting looks for delivered jobs that no lease names (a killed dispatcher's fetch) and hands them
    back. A live round_robin replica's bound jobs are delivered and waiting too: their claims name them, so they are
    not handed back (else they ran twice: once where bound, once elsewhere)."""
    hub = await start_hub(**ROUND_ROBIN)
    double, first, bound = await bound_behind_a_running_job(hub, comfyui, work_seconds=20)
    other = hub.start("dispatch", **ROUND_ROBIN)  # a second replica (another identity)
    await other.wait_healthy(hub.nc)
    await asyncio.sleep(4)  # its two looks for jobs named nowhere, 2 s apart
    assert (await job(hub.nc, bound.job_id)).status == "queued", "the first job ended too soon: nothing stayed bound"
    assert "handed back jobs its predecessor had fetched" not in other.log(), other.log()

    views = [await wait_final(hub.nc, r.job_id, timeout_s=60) for r in (first, bound)]
    assert [(v.status, v.attempts) for v in views] == [("completed", 1)] * 2, views
    assert double.executed_prompt_ids == [first.job_id + "-1", bound.job_id + "-1"], other.log()


async def test_a_round_robin_job_bound_while_nats_restarts_runs_once_it_is_back(
    private_nats: NatsServer, start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """round_robin: the task that starts an instance's bound jobs asks for a slot again and again while that one
    is busy; NATS away meanwhile, it rides the errors out and starts the bound job once the slot frees."""
    hub = await start_hub(**ROUND_ROBIN)
    double, first, bound = await bound_behind_a_running_job(hub, comfyui, work_seconds=3)
    private_nats.stop()
    await asyncio.sleep(7.0)  # longer than a request's timeout (5 s): the slot's KV create fails
    private_nats.start()

    views = [await wait_final(hub.nc, r.job_id, timeout_s=90) for r in (first, bound)]
    assert [v.status for v in views] == ["completed"] * 2, (
        [(v.status, v.error) for v in views],
        hub.processes["dispatch"].log()[-4000:],
    )
    assert double.executed_prompt_ids == [first.job_id + "-1", bound.job_id + "-1"]


async def test_a_restarted_dispatcher_follows_the_job_its_predecessor_left_running_on_comfyui(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """ComfyUI still runs the prompt of the killed dispatcher: its successor follows that prompt to its end and
    stores its output, instead of running the job a second time (before: it ran again, attempt 2)."""
    hub = await start_hub(**SLOW_TAKEOVER)
    double = await comfyui(hub, "only", work_seconds=3)
    await asyncio.sleep(0.5)
    orphan = await running(hub, "left running on ComfyUI", seed=1)
    behind = await submit(hub.nc, "waiting behind it", seed=2)
    deadline = time.monotonic() + 30
    while double.running != orphan.job_id + "-1":  # ComfyUI works on it
        assert time.monotonic() < deadline, double.executed_prompt_ids
        await asyncio.sleep(0.05)

    hub.processes["dispatch"].kill()
    restarted = hub.start("dispatch", **SLOW_TAKEOVER)
    await restarted.wait_healthy(hub.nc)
    done = await wait_final(hub.nc, orphan.job_id, timeout_s=60)
    assert (done.status, done.attempts, len(done.outputs)) == ("completed", 1, 1), (done, restarted.log())
    after = await wait_final(hub.nc, behind.job_id, timeout_s=60)
    assert after.status == "completed", after
    # ComfyUI ran it once; the job waiting behind it ran after it, on the slot the adopted job kept.
    assert double.executed_prompt_ids == [orphan.job_id + "-1", behind.job_id + "-1"], restarted.log()
    assert "adopted the jobs this replica's predecessor left running on ComfyUI" in restarted.log()


class HeldOutput(ComfyUIDouble):
    """A double that never answers the first /view request (an output download); the later ones as usual."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.viewed = asyncio.Event()

    async def _get_view(self, request: web.Request) -> web.StreamResponse:
        if not self.viewed.is_set():
            self.viewed.set()
            await asyncio.Event().wait()  # until the dispatcher that asked dies (its connection closes)
        return await super()._get_view(request)


async def test_a_job_whose_outputs_a_killed_dispatcher_was_storing_completes_at_once_after_its_restart(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """kill -9 while a finished job's outputs are fetched and stored: its slot is free already (the next job
    started there), yet its message is not acked; a claim names it, so the restarted replica hands it back at once
    and it is followed on ComfyUI (finished there, not run again: its one download is held, the kill comes first)
    instead of waiting out the take-over time."""
    hub = await start_hub(**SLOW_TAKEOVER)
    double = await comfyui(hub, "only", work_seconds=0.1, kind=HeldOutput)
    assert isinstance(double, HeldOutput)
    await asyncio.sleep(0.5)
    reply = await submit(hub.nc, "stored when the dispatcher died", seed=1)
    await asyncio.wait_for(double.viewed.wait(), timeout=30)
    await asyncio.sleep(0.5)  # the slot freed, the claim written

    await killed_and_restarted_then_run_once(hub, double, reply, **SLOW_TAKEOVER)


class SlowToDescribe(ComfyUIDouble):
    """A double whose /object_info takes `describe_s` (a real ComfyUI's is hundreds of kilobytes); it notes when it
    answered that and when it received each prompt."""

    describe_s = 0.0

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.described_at: list[float] = []
        self.prompted_at: list[float] = []

    async def _get_object_info(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.describe_s)
        self.described_at.append(time.monotonic())
        return await super()._get_object_info(request)

    async def _post_prompt(self, request: web.Request) -> web.Response:
        self.prompted_at.append(time.monotonic())
        return await super()._post_prompt(request)


async def test_a_restarted_dispatcher_places_jobs_on_what_its_predecessor_read_and_reads_it_again_after(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """What an instance can run (its /object_info and model lists: a dozen requests, the slowest part of a restart)
    is recalled from the KV bucket where the killed dispatcher stored it: the restarted one places a job before it
    has read them itself, then reads them again in the background."""
    hub = await start_hub()
    double = await comfyui(hub, "slow", work_seconds=0.1, kind=SlowToDescribe)
    first = await submit(hub.nc, "before the crash", seed=1)
    assert (await wait_final(hub.nc, first.job_id, timeout_s=30)).status == "completed"

    hub.processes["dispatch"].kill()
    double.describe_s = 2.0
    restarted_at = time.monotonic()
    restarted = hub.start("dispatch")
    await restarted.wait_healthy(hub.nc)
    after = await submit(hub.nc, "after the restart", seed=2)
    assert (await wait_final(hub.nc, after.job_id, timeout_s=30)).status == "completed", restarted.log()
    placed_at = double.prompted_at[-1]
    described = [t for t in double.described_at if t > restarted_at]
    # Placed before the restarted dispatcher's own reading came back (2 s): it did not wait for it.
    assert not described or placed_at < described[0], (placed_at - restarted_at, described, restarted.log())
    deadline = time.monotonic() + 15
    while not [t for t in double.described_at if t > restarted_at]:  # read again, in the background
        assert time.monotonic() < deadline, restarted.log()
        await asyncio.sleep(0.1)


async def test_a_replica_taking_over_from_a_dead_one_follows_its_job_on_comfyui(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    """A dispatcher dies and is not restarted; another replica takes its job over after the take-over time (3 s
    here). ComfyUI still runs the prompt: the other replica follows it there instead of running the job again."""
    hub = await start_hub()
    # Kept under a name of its own: killed after the test with the hub's other processes, whatever happens.
    dying = hub.processes["dying dispatch"] = hub.processes["dispatch"]
    double = await comfyui(hub, "only", work_seconds=20)
    await asyncio.sleep(0.5)
    orphan = await submit(hub.nc, "its dispatcher dies", seed=1)
    deadline = time.monotonic() + 30
    while double.running != orphan.job_id + "-1":  # ComfyUI works on it, for 20 s
        assert time.monotonic() < deadline, double.executed_prompt_ids
        await asyncio.sleep(0.05)
    other = hub.start("dispatch")  # a second replica (another identity): it never reclaims the first's leases
    await other.wait_healthy(hub.nc)
    dying.kill()
    assert double.running == orphan.job_id + "-1", "the job ended before its dispatcher died: nothing to take over"

    try:
        done = await wait_final(hub.nc, orphan.job_id, timeout_s=60)
    except (AssertionError, HubError) as exc:
        raise AssertionError(f"{exc}\n--- the other replica's log ---\n{other.log()[-6000:]}") from None
    assert (done.status, done.attempts, len(done.outputs)) == ("completed", 1, 1), (done, other.log())
    assert double.executed_prompt_ids == [orphan.job_id + "-1"], other.log()  # ComfyUI ran it once


def test_replicas_sharing_a_data_folder_get_distinct_identities_and_a_restart_gets_its_own_back(tmp_path: Path):
    first, second = take_identity(tmp_path), take_identity(tmp_path)
    assert first.name != second.name  # two live replicas never reclaim each other's leases
    first.release()  # what the OS does when the process dies, kill -9 included
    assert take_identity(tmp_path).name == first.name


async def test_a_graceful_stop_lets_short_jobs_finish_and_hands_the_others_back_at_once(
    start_hub: Callable[..., Awaitable[Hub]], comfyui: Callable[..., Awaitable[ComfyUIDouble]]
):
    # Grace of 3 s: the job on `quick` (1.5 s) finishes in it, the one on `slow` (20 s) does not. The take-over
    # time is long: only a job handed back runs again soon.
    env = {"HUB_DISPATCH_TAKEOVER_S": "60", "HUB_DISPATCH_STALL_TIMEOUT_S": "30", "HUB_SHUTDOWN_TIMEOUT_S": "3"}
    hub = await start_hub(**env)
    quick, slow = [await comfyui(hub, name, work_seconds=seconds) for name, seconds in (("quick", 1.5), ("slow", 20))]
    await asyncio.sleep(0.5)
    replies = [await submit(hub.nc, f"stopped mid-run {i}", seed=i) for i in range(2)]
    views = [await wait_for(hub.nc, r.job_id, {"running"}) for r in replies]
    on_slow = next(v for v in views if v.instance == "slow")
    on_quick = next(v for v in views if v.instance == "quick")

    assert await hub.processes["dispatch"].stop(timeout_s=30) == 0
    stopped_at = time.monotonic()
    # The other was interrupted on ComfyUI, not left running there (it would end after 20 s, a success).
    while f"{on_slow.job_id}-1" not in slow.history:
        assert time.monotonic() - stopped_at < 10, "the job handed back was left running on ComfyUI"
        await asyncio.sleep(0.05)
    assert slow.history[f"{on_slow.job_id}-1"]["status"]["status_str"] == "error"
    restarted = hub.start("dispatch", **env)  # the stopped one answers no more: ask the next one
    await restarted.wait_healthy(hub.nc)
    done = await job(hub.nc, on_quick.job_id)
    assert (done.status, done.attempts) == ("completed", 1)  # it finished within the grace
    # The job handed back runs again at once, not after the take-over time.
    while f"{on_slow.job_id}-2" not in quick.executed_prompt_ids + slow.executed_prompt_ids:
        assert time.monotonic() - stopped_at < 20, restarted.log()
        await asyncio.sleep(0.05)
