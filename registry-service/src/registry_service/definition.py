"""Checking a render type before it is stored, and describing it to callers."""

from __future__ import annotations

import msgspec

from contracts.messages.base import struct_from
from contracts.messages.render_types import ParameterMap, RenderType, RenderTypeSummary
from registry_service.analysis import check_outputs, requirements_of
from registry_service.parameters import (
    PARAMETER_ORDER,
    check_defaults,
    check_limits,
    check_map,
    parameter_specs,
)
from registry_service.workflow import check_workflow, unwrap_prompt_body


def prepare(render_type: RenderType, *, field: str = "render_type") -> RenderType:
    """The render type as it will be stored: checked whole, requirements derived from its workflow.

    Raises a `HubError` naming the field at fault; nothing is stored unless all of it is valid.
    """
    workflow = unwrap_prompt_body(render_type.workflow)
    check_workflow(workflow, field=f"{field}.workflow")
    check_outputs(workflow, field=f"{field}.workflow")
    # Parameters in their usual order, without empty slot lists.
    slots = render_type.parameter_map.slots
    parameter_map = ParameterMap(slots={name: list(slots[name]) for name in PARAMETER_ORDER if slots.get(name)})
    check_map(workflow, parameter_map, f"{field}.parameter_map")
    check_limits(render_type.limits, f"{field}.limits")
    check_defaults(render_type.defaults, render_type.limits, parameter_map, f"{field}.defaults")
    return msgspec.structs.replace(
        render_type,
        description=render_type.description.strip(),
        workflow=workflow,
        parameter_map=parameter_map,
        requirements=requirements_of(workflow),
    )


def same_definition(a: RenderType, b: RenderType) -> bool:
    """True when saving `a` over `b` would change nothing (version and timestamps aside)."""
    ignore = {"version": 0, "updated_at": None, "updated_by": ""}
    return msgspec.structs.replace(a, **ignore) == msgspec.structs.replace(b, **ignore)


def summary(render_type: RenderType) -> RenderTypeSummary:
    specs = parameter_specs(render_type)
    return struct_from(
        RenderTypeSummary,
        render_type,
        parameters=[spec.name for spec in specs],
        defaults={spec.name: spec.default for spec in specs if spec.default is not None},
        parameter_specs=specs,
    )
