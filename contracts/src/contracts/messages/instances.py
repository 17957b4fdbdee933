"""dispatch-service: the ComfyUI instances of the pool."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.messages.base import Record, Request
from contracts.messages.render_types import ModelRef

InstanceName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]


class Instance(Record):
    name: InstanceName
    base_url: Annotated[str, msgspec.Meta(description="e.g. http://127.0.0.1:8188")]
    enabled: bool = True
    slots: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    weight: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 100
    # e.g. "Authorization: Bearer ..." for a ComfyUI behind a proxy; never returned in full, never logged.
    auth_header: str | None = None
    tags: list[str] = []


class InstanceHealth(Record):
    up: bool = False
    checked_at: float | None = None
    latency_ms: float | None = None
    device: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    queue_remaining: int | None = None
    comfyui_version: str | None = None
    node_class_count: int = 0
    models: list[ModelRef] = []
    last_error: str | None = None


class InstanceView(Record):
    instance: Instance
    health: InstanceHealth
    running_jobs: int = 0
    compatible_render_types: list[str] = []


class InstanceList(Record):
    instances: list[InstanceView]


class ListInstances(Request):
    pass


class GetInstance(Request):
    name: InstanceName


class SaveInstance(Request):
    instance: Instance
    original_name: str | None = None


class DeleteInstance(Request):
    name: InstanceName


class ProbeInstance(Request):
    """Probe a URL (saved or not) the way the health loop does, and report what it offers."""

    base_url: str
    auth_header: str | None = None
