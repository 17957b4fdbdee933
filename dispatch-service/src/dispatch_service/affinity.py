"""Model affinity: which models each ComfyUI instance holds, what a switch costs, and who takes which job.

Loading a checkpoint takes seconds to minutes; ComfyUI keeps the models of its last prompt loaded (its node
cache), so a job whose models an instance already holds skips that load. The dispatcher knows:

- what each instance holds: the model files of the loader nodes of the last workflow it was given (checkpoint,
  UNet, VAE, CLIP, LoRA, upscale model...: inputs named like a loader's, or naming a file of the instance's model
  lists), corrected by what ComfyUI reports for each run (a loader listed in `execution_cached` was warm; one that
  ran loaded its model). A restart of the instance (seen down, then up) forgets it. This knowledge lives in a
  JetStream KV bucket (instance -> models) that every dispatcher replica writes when it starts a job and follows
  with a watcher: any replica may place a job on any instance, so each must see what the others loaded.
- what a switch costs and how long a job runs: exponential moving averages per (render type, instance) of the
  run times it measured, warm and cold apart (a switch is cold minus warm); until measured, a switch is assumed to
  take HUB_DISPATCH_MODEL_SWITCH_S. These stay in each replica (each measures the jobs it runs).

`plan` matches waiting jobs to free instances: a job goes to a free instance holding its models; when only
instances holding other models are free, the job waits only if a warm instance is expected to take it (after the
jobs of the same models ahead of it) sooner than the switch would take. Capacity never idles on a guess: an
unknown run time counts as "not sooner".
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
from nats.js import JetStreamContext

from contracts.runtime.bus import KvStore
from contracts.runtime.logs import get_logger
from contracts.streams import BucketSpec
from dispatch_service.leases import instance_key
from dispatch_service.store import JobRecord

if TYPE_CHECKING:
    from dispatch_service.pool import InstanceState

log = get_logger("affinity")

MODELS_BUCKET = "hub-dispatch-models"
MODELS: Final = BucketSpec(
    name=MODELS_BUCKET,
    ttl_s=0,
    description="Which models each ComfyUI instance holds, as far as the dispatchers know",
)
EMA_WEIGHT = 0.3  # of the newest measurement: follows a change within a few jobs, smooths one odd run
# Input names of ComfyUI's model loader nodes (CheckpointLoaderSimple, UNETLoader, VAELoader, CLIPLoader,
# DualCLIPLoader, LoraLoader, UpscaleModelLoader, ControlNetLoader, ...); custom loaders mostly reuse them.
LOADER_INPUTS = frozenset(
    {
        "ckpt_name",
        "unet_name",
        "vae_name",
        "clip_name",
        "clip_name1",
        "clip_name2",
        "clip_name3",
        "clip_name4",
        "lora_name",
        "model_name",
        "control_net_name",
        "style_model_name",
        "gligen_name",
        "hypernetwork_name",
        "photomaker_model_name",
    }
)


def loader_nodes(workflow: Mapping[str, Any], known_files: frozenset[str] = frozenset()) -> dict[str, frozenset[str]]:
    """The loader nodes of an API workflow and the model files each loads: literal string inputs named like a
    loader's, or naming a file of an instance's model lists (`known_files`)."""
    found: dict[str, frozenset[str]] = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        files = {
            value
            for name, value in inputs.items()
            if isinstance(value, str) and value and (name in LOADER_INPUTS or value in known_files)
        }
        if files:
            found[str(node_id)] = frozenset(files)
    return found


def models_of(loaders: Mapping[str, frozenset[str]]) -> frozenset[str]:
    return frozenset().union(*loaders.values()) if loaders else frozenset()


class LoadedModels(msgspec.Struct, frozen=True):
    """The value of an instance's key in the models bucket."""

    instance: str
    models: list[str]
    since: float


class ModelMemory(KvStore):
    """What each instance holds, shared between replicas through a KV bucket; the local view answers at once."""

    bucket_spec = MODELS

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        super().__init__(js, replicas=replicas)
        self._loaded: dict[str, frozenset[str]] = {}  # by instance name
        self._follower: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await super().open()
        self._follower = asyncio.ensure_future(self._follow())

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def _follow(self) -> None:
        """Keep the local view in step with what other replicas write (and forget)."""
        assert self._opened is not None
        while True:
            try:
                watcher = await self._opened.watchall()
                async for entry in watcher:
                    if entry is not None:
                        self._apply(entry.key, entry.value, deleted=entry.operation is not None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away for a moment: the local view still serves, follow again soon
                log.warning("cannot follow the loaded models of other dispatchers", error=str(exc) or repr(exc))
                await asyncio.sleep(1.0)

    def _apply(self, key: str, value: bytes | None, *, deleted: bool) -> None:
        if deleted or not value:
            for name in [n for n in self._loaded if instance_key(n) == key]:
                self._loaded.pop(name)
            return
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            loaded = msgspec.json.decode(value, type=LoadedModels)
            self._loaded[loaded.instance] = frozenset(loaded.models)

    def loaded(self, instance: str) -> frozenset[str]:
        return self._loaded.get(instance, frozenset())

    def hold(self, instance: str, models: frozenset[str]) -> bool:
        """`instance` takes a workflow loading `models`: they replace what it held (ComfyUI's cache keeps the
        nodes of the last prompt only; a workflow without loaders leaves none). True when that is news."""
        if self._loaded.get(instance, frozenset()) == models:
            return False
        self._loaded[instance] = models
        return True

    async def share(self, instance: str, models: frozenset[str]) -> None:
        value = msgspec.json.encode(LoadedModels(instance=instance, models=sorted(models), since=time.time()))
        await self._write(lambda kv: kv.put(instance_key(instance), value))

    async def forget(self, instance: str) -> None:
        """The instance restarted (or freed its memory): it holds nothing we know of."""
        if self._loaded.pop(instance, None) is not None:
            log.info("forgot the models of an instance", instance=instance)
        await self._write(lambda kv: kv.delete(instance_key(instance)))

    async def _write(self, change: Any) -> None:
        if self._opened is None:
            return
        try:
            await change(self._opened)
        except Exception as exc:  # the local view is right; other replicas learn it at the next write
            log.warning("could not share the loaded models of an instance", error=str(exc) or repr(exc))


@dataclass
class _Average:
    value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + EMA_WEIGHT * (sample - self.value)


class CostModel:
    """Run time and switch cost per (render type, instance), learnt from the runs this replica measured."""

    def __init__(self, default_switch_s: float) -> None:
        self.default_switch_s = default_switch_s
        self._warm: dict[tuple[str, str], _Average] = {}
        self._cold: dict[tuple[str, str], _Average] = {}

    def observe(self, render_type: str, instance: str, seconds: float, *, warm: bool) -> None:
        table = self._warm if warm else self._cold
        table.setdefault((render_type, instance), _Average()).add(seconds)

    def run_s(self, render_type: str, instance: str) -> float | None:
        """Expected run time of a warm job; a cold measurement (an overestimate) until a warm one exists."""
        for table in (self._warm, self._cold):
            average = table.get((render_type, instance))
            if average is not None and average.value is not None:
                return average.value
        return None

    def switch_s(self, render_type: str, instance: str) -> float:
        warm = self._warm.get((render_type, instance), _Average()).value
        cold = self._cold.get((render_type, instance), _Average()).value
        if warm is None or cold is None:
            return self.default_switch_s
        return max(0.0, cold - warm)

    def remaining_s(self, expected_s: float | None, elapsed_s: float) -> float | None:
        """Time left of a run expected to take `expected_s`; one running past it is assumed to need as long again
        as it overran (so a stuck instance soon stops looking like it will free up)."""
        if expected_s is None:
            return None
        return abs(expected_s - elapsed_s)


@dataclass
class Server:
    """An instance as `plan` sees it."""

    name: str
    free_slots: int
    loaded: frozenset[str]
    frees_in_s: float | None = None  # when busy: expected seconds until a slot frees (None: unknown)


@dataclass
class Waiting:
    """A waiting job as `plan` sees it."""

    render_type: str
    models: frozenset[str]
    able: list[str]  # instances that can run it, best first (free capacity, weight)
    placed: str | None = field(default=None)


def _holds(server: Server, job: Waiting) -> bool:
    return job.models <= server.loaded


def plan(jobs: list[Waiting], servers: dict[str, Server], costs: CostModel) -> None:
    """Set `placed` on the jobs that should start now, oldest first. Warm matches first; then a job takes a free
    instance holding other models unless a warm one is expected to take it sooner than the switch would take."""
    for job in jobs:
        warm = [name for name in job.able if servers[name].free_slots > 0 and _holds(servers[name], job)]
        if warm:
            _take(job, servers[warm[0]], costs)
    for index, job in enumerate(jobs):
        if job.placed is not None:
            continue
        cold = [name for name in job.able if servers[name].free_slots > 0]
        if not cold:
            continue
        ahead = sum(1 for other in jobs[:index] if other.placed is None and other.models == job.models)
        pick = min(cold, key=lambda name: _demand(servers[name], jobs))  # stable: best first among equals
        wait = _warm_wait(job, ahead, servers, costs)
        if wait is not None and wait < costs.switch_s(job.render_type, pick):
            continue
        _take(job, servers[pick], costs)


def _take(job: Waiting, server: Server, costs: CostModel) -> None:
    """`job` starts on `server`: the jobs after it in this round see the models it loads and when it frees."""
    job.placed = server.name
    server.free_slots -= 1
    switch = 0.0 if _holds(server, job) else costs.switch_s(job.render_type, server.name)
    server.loaded = job.models
    run = costs.run_s(job.render_type, server.name)
    ends = None if run is None else run + switch
    if ends is not None and (server.frees_in_s is None or ends < server.frees_in_s):
        server.frees_in_s = ends


def _demand(server: Server, jobs: Iterable[Waiting]) -> int:
    """How many waiting jobs the models `server` holds would serve: the fewer, the cheaper to switch it."""
    return sum(1 for job in jobs if job.placed is None and job.models and _holds(server, job))


def _warm_wait(job: Waiting, ahead: int, servers: Mapping[str, Server], costs: CostModel) -> float | None:
    """Expected seconds until a busy instance holding the job's models takes it, after the `ahead` jobs of the same
    models; None when no such instance has a known estimate."""
    upcoming: list[tuple[float, float]] = []
    for name in job.able:
        server = servers[name]
        period = costs.run_s(job.render_type, name)
        if _holds(server, job) and server.free_slots <= 0 and server.frees_in_s is not None and period:
            upcoming.append((server.frees_in_s, period))
    if not upcoming or not job.models:
        return None
    heapq.heapify(upcoming)
    for _ in range(ahead):
        frees, period = heapq.heappop(upcoming)
        heapq.heappush(upcoming, (frees + period, period))
    return upcoming[0][0]


@dataclass
class _Run:
    instance: str
    render_type: str
    loaders: dict[str, frozenset[str]]
    started: float  # monotonic
    expected_s: float | None
    alone: bool  # the only job of this replica on the instance: its run time is the job's own
    news: bool  # it changes what the instance holds: to be shared with the other replicas


class Affinity:
    """Tracks the runs of this replica: what they load, how long they take, when their instances free up."""

    def __init__(self, memory: ModelMemory, costs: CostModel) -> None:
        self.memory = memory
        self.costs = costs
        self._runs: dict[str, _Run] = {}
        self.switches: dict[str, int] = {}  # per instance: jobs that loaded models it did not hold (the figures)
        self.switch_seconds: dict[str, float] = {}  # per instance: what those loads took, as measured (the figures)

    def begin(self, job_id: str, state: InstanceState, row: JobRecord) -> None:
        """A job takes a slot of `state` (called as it does, so the next placement already counts with it)."""
        instance, render_type = state.config.name, row.render_type
        loaders = loader_nodes(row.workflow, state.model_files)
        models = models_of(loaders)
        warm = models <= self.memory.loaded(instance)
        if models and not warm:
            self.switches[instance] = self.switches.get(instance, 0) + 1
        news = self.memory.hold(instance, models)
        run_s = self.costs.run_s(render_type, instance)
        expected = None if run_s is None else run_s + (0.0 if warm else self.costs.switch_s(render_type, instance))
        alone = state.running <= 1
        self._runs[job_id] = _Run(instance, render_type, loaders, time.monotonic(), expected, alone, news)

    async def starting(self, job_id: str) -> None:
        """The job is handed to ComfyUI: its models will be loaded there."""
        run = self._runs.get(job_id)
        if run is not None:
            run.started = time.monotonic()
            if run.news:
                await self.memory.share(run.instance, models_of(run.loaders))

    def ran(self, job_id: str, cached_nodes: Iterable[str]) -> None:
        """ComfyUI finished the job: learn its run time, warm (every loader cached) or cold."""
        run = self._runs.get(job_id)
        if run is None or not run.alone:
            return
        warm = set(run.loaders) <= set(cached_nodes)
        self.costs.observe(run.render_type, run.instance, time.monotonic() - run.started, warm=warm)

    def switch_s(self, job_id: str, cached_nodes: Iterable[str], node_seconds: Mapping[str, float]) -> float | None:
        """The seconds the job's model loads took on its instance (its loader nodes that ComfyUI ran rather than
        took from its cache), added to `switch_seconds`; None when it loaded nothing, its models were held. 0.0 when
        a load happened but its time is not known (the result came from the history)."""
        run = self._runs.get(job_id)
        if run is None:
            return None
        ran = set(run.loaders) - set(cached_nodes)
        if not ran:
            return None
        seconds = sum(node_seconds.get(node, 0.0) for node in ran)
        self.switch_seconds[run.instance] = self.switch_seconds.get(run.instance, 0.0) + seconds
        return seconds

    def ended(self, job_id: str) -> None:
        self._runs.pop(job_id, None)

    def frees_in_s(self, instance: str) -> float | None:
        """Expected seconds until this replica's oldest job on `instance` ends (ComfyUI runs them in turn)."""
        runs = [run for run in self._runs.values() if run.instance == instance]
        if not runs:
            return None
        oldest = min(runs, key=lambda run: run.started)
        return self.costs.remaining_s(oldest.expected_s, time.monotonic() - oldest.started)
