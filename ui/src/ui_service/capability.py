"""Which models a render type needs that no ComfyUI instance has: the list's badge, the save warning and the
first-run offer all say it the same way."""

from __future__ import annotations

from collections.abc import Iterable

from contracts.messages.instances import InstanceHealth, InstanceView
from contracts.messages.render_types import Requirements


def missing_on(requirements: Requirements, health: InstanceHealth) -> list[str]:
    """The needed models one instance lacks, as `folder/name`."""
    present = {(model.folder, model.name) for model in health.models}
    return [f"{m.folder}/{m.name}" for m in requirements.models if (m.folder, m.name) not in present]


def missing_everywhere(requirements: Requirements, instances: Iterable[InstanceView]) -> list[str]:
    """The needed models not on the enabled instance that has the most of them ([] when one has them all).
    Instances whose models are not known yet (never reached) are left out; with none known, every model is
    missing, as nothing can run it yet."""
    known = [view.health for view in instances if view.instance.enabled and view.health.models]
    if not requirements.models:
        return []
    if not known:
        return [f"{m.folder}/{m.name}" for m in requirements.models]
    return min((missing_on(requirements, health) for health in known), key=len)
