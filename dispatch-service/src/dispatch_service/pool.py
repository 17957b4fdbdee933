"""The pool of ComfyUI instances as this dispatcher sees it: configuration, health and capabilities.

A health loop polls each enabled instance (`/system_stats`, `/queue`; `/object_info` and model lists when
it comes up and every few minutes), so the scheduler knows which instances are up, what they can run and
how loaded they are. Each dispatcher replica keeps its own view; slot leases (leases.py) are shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from contracts.messages.instances import Instance, InstanceHealth
from contracts.messages.render_types import ModelRef, Requirements
from contracts.runtime.logs import get_logger
from dispatch_service.capabilities import CAPABILITY_REFRESH_S, Capabilities, CapabilityMemory
from dispatch_service.comfyui import ComfyClient, ComfyError

log = get_logger("pool")

# Model folders asked for on every capability refresh; folders named by a job's requirements are added.
COMMON_MODEL_FOLDERS = (
    "checkpoints",
    "loras",
    "vae",
    "upscale_models",
    "controlnet",
    "diffusion_models",
    "text_encoders",
    "clip",
    "clip_vision",
    "unet",
)


@dataclass
class InstanceState:
    config: Instance
    client: ComfyClient
    health: InstanceHealth = field(default_factory=InstanceHealth)
    node_classes: frozenset[str] = frozenset()
    models: dict[str, frozenset[str]] = field(default_factory=dict)
    capabilities_at: float = 0.0
    recalled: bool = False  # the capabilities are another process's reading (capabilities.py), not yet read here
    running: int = 0  # jobs this replica runs on it now

    @property
    def capabilities_known(self) -> bool:
        return self.capabilities_at > 0

    @property
    def model_files(self) -> frozenset[str]:
        """Every model file the instance lists, whatever its folder."""
        return frozenset().union(*self.models.values()) if self.models else frozenset()

    @property
    def available(self) -> bool:
        return self.config.enabled and self.health.up

    def missing(self, requirements: Requirements) -> list[str]:
        """What this instance lacks to run a workflow with `requirements` (empty: it can run it)."""
        lacks = [f"node class {name}" for name in requirements.node_classes if name not in self.node_classes]
        for model in requirements.models:
            if model.name not in self.models.get(model.folder, frozenset()):
                lacks.append(f"model {model.folder}/{model.name}")
        return lacks

    def can_run(self, requirements: Requirements) -> bool:
        return self.capabilities_known and not self.missing(requirements)


class Pool:
    def __init__(
        self, *, health_interval_s: float, http_timeout_s: float = 5.0, memory: CapabilityMemory | None = None
    ) -> None:
        self.health_interval_s = health_interval_s
        self.http_timeout_s = http_timeout_s
        self.memory = memory  # what the instances can run, as last read (by this replica's predecessor, another one)
        self.states: dict[str, InstanceState] = {}
        self.wanted_folders: set[str] = set(COMMON_MODEL_FOLDERS)
        # Set whenever something that could let a waiting job start changes (an instance up, a slot freed).
        self.changed = asyncio.Event()
        # Called with an instance's name when it is up again after being seen down (it may have restarted).
        self.on_back_up: Callable[[str], Awaitable[None]] | None = None

    def notify(self) -> None:
        self.changed.set()

    async def set_instances(self, instances: list[Instance]) -> None:
        """Adopt the configured instances, keeping what is known of those that did not change."""
        fresh: dict[str, InstanceState] = {}
        for config in instances:
            old = self.states.get(config.name)
            if old is not None and (old.config.base_url, old.config.auth_header) == (
                config.base_url,
                config.auth_header,
            ):
                old.config = config
                fresh[config.name] = old
            else:
                if old is not None:
                    await old.client.aclose()
                fresh[config.name] = InstanceState(
                    config=config,
                    client=ComfyClient(config.base_url, auth_header=config.auth_header, timeout_s=self.http_timeout_s),
                )
        for name, old in self.states.items():
            if name not in fresh:
                await old.client.aclose()
        self.states = fresh
        await asyncio.gather(*(self._first_probe(state) for state in fresh.values() if state.config.enabled))
        self.notify()

    async def _first_probe(self, state: InstanceState) -> None:
        """Up or down, asked now; what it can run recalled when another process read it lately (else read now)."""
        if not state.capabilities_known and self.memory is not None:
            recalled = await self.memory.recall(state.config.name, state.config.base_url)
            if recalled is not None:
                self.wanted_folders |= set(recalled.models)
                state.node_classes = frozenset(recalled.node_classes)
                state.models = {folder: frozenset(names) for folder, names in recalled.models.items()}
                state.capabilities_at, state.recalled = recalled.read_at, True
        await self.probe(state, recalled_will_do=True)

    async def close(self) -> None:
        for state in self.states.values():
            await state.client.aclose()

    def want_folders(self, requirements: Requirements) -> None:
        new = {m.folder for m in requirements.models} - self.wanted_folders
        if new:
            self.wanted_folders |= new
            for state in self.states.values():
                state.capabilities_at = 0.0 if state.health.up else state.capabilities_at

    async def probe(self, state: InstanceState, *, recalled_will_do: bool = False) -> None:
        """One health check; capabilities are read when the instance comes up, when they are stale or recalled (read
        by another process), unless `recalled_will_do` (the first probe of a start: jobs are placed at once, the next
        probe reads them)."""
        was_up = state.health.up
        seen_down = not was_up and state.health.checked_at is not None
        started = time.perf_counter()
        try:
            info = await state.client.system_stats()
            queue = await state.client.queue()
            latency_ms = (time.perf_counter() - started) * 1000
            if self._capabilities_due(state, was_up=was_up, recalled_will_do=recalled_will_do):
                await self._read_capabilities(state)
        except ComfyError as exc:
            self.mark_down(state, str(exc))
            return
        state.health = InstanceHealth(
            up=True,
            checked_at=time.time(),
            latency_ms=round(latency_ms, 2),
            device=info.device_name,
            vram_total=info.vram_total,
            vram_free=info.vram_free,
            queue_remaining=len(queue.running) + len(queue.pending),
            comfyui_version=info.comfyui_version,
            node_class_count=len(state.node_classes),
            models=[ModelRef(folder=f, name=n) for f, names in sorted(state.models.items()) for n in sorted(names)],
        )
        if not was_up:
            log.info("instance up", instance=state.config.name, url=state.config.base_url)
            if seen_down and self.on_back_up is not None:
                await self.on_back_up(state.config.name)
            self.notify()

    @staticmethod
    def _capabilities_due(state: InstanceState, *, was_up: bool, recalled_will_do: bool) -> bool:
        if state.recalled:
            return not recalled_will_do
        return not was_up or time.time() - state.capabilities_at > CAPABILITY_REFRESH_S

    async def _read_capabilities(self, state: InstanceState) -> None:
        object_info = await state.client.object_info()
        folders = sorted(self.wanted_folders)
        lists = await asyncio.gather(*(state.client.models(folder) for folder in folders))
        state.node_classes = frozenset(object_info)
        state.models = {folder: frozenset(names) for folder, names in zip(folders, lists, strict=True) if names}
        state.capabilities_at, state.recalled = time.time(), False
        if self.memory is not None:
            reading = Capabilities(
                base_url=state.config.base_url,
                node_classes=sorted(state.node_classes),
                models={folder: sorted(names) for folder, names in state.models.items()},
                read_at=state.capabilities_at,
            )
            await self.memory.remember(state.config.name, reading)

    def mark_down(self, state: InstanceState, reason: str) -> None:
        if state.health.up:
            log.warning("instance down", instance=state.config.name, reason=reason)
        state.health = InstanceHealth(
            up=False,
            checked_at=time.time(),
            last_error=reason,
            node_class_count=len(state.node_classes),
            models=state.health.models,
        )

    async def health_loop(self) -> None:
        while True:
            states = [s for s in self.states.values() if s.config.enabled]
            results = await asyncio.gather(*(self.probe(s) for s in states), return_exceptions=True)
            for state, result in zip(states, results, strict=True):
                if isinstance(result, Exception):  # a bug in a probe must not stop the loop for every instance
                    log.error("health probe failed", instance=state.config.name, exc_info=result)
            await asyncio.sleep(self.health_interval_s)

    def candidates(self, requirements: Requirements) -> list[InstanceState]:
        """Up, enabled instances able to run `requirements`, best first: most free capacity, then weight."""
        able = [s for s in self.states.values() if s.available and s.can_run(requirements)]
        return sorted(
            able,
            key=lambda s: (s.running / s.config.slots, -s.config.weight, s.health.latency_ms or 0.0),
        )

    def why_never(self, requirements: Requirements) -> str | None:
        """A reason when no configured instance could ever run `requirements`; None while one might."""
        enabled = [s for s in self.states.values() if s.config.enabled]
        if not enabled:
            return "no ComfyUI instance is configured and enabled; add one in the admin UI (Instances)"
        if any(not s.capabilities_known or s.recalled for s in enabled):
            return None  # an instance we have not been able to read yet (ourselves) may have what it takes
        lacking = {s.config.name: s.missing(requirements) for s in enabled}
        if all(lacking.values()):
            detail = "; ".join(f"{name} lacks {', '.join(what)}" for name, what in lacking.items())
            return f"no ComfyUI instance can run this render type: {detail}"
        return None
