"""Request parameters of a render type: what each one is, where it may go in a workflow, and its valid values.

`resolve` turns a render type and a request's parameters into the workflow ComfyUI runs; every value is checked
first, with an error that names the field and says what would be accepted.
"""

from __future__ import annotations

import builtins
import copy
import math
import random
from dataclasses import dataclass
from typing import Any, Final, Literal

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import (
    REQUEST_MAX_CFG,
    REQUEST_MAX_COUNT,
    REQUEST_MAX_SEED,
    REQUEST_MAX_SIZE,
    REQUEST_MAX_STEPS,
    REQUEST_MIN_SIZE,
)
from contracts.messages.render_types import (
    GenerationParams,
    ParameterMap,
    ParameterName,
    ParameterSpec,
    RenderDefaults,
    RenderLimits,
    RenderType,
    ResolvedWorkflow,
)
from registry_service.workflow import describe_node, is_link, node_ids_in_order

# ComfyUI's own limits (0.3.64 `/object_info`: KSampler seed/steps/cfg, EmptyLatentImage size and batch).
COMFY_MAX_SEED: Final = 2**64 - 1
COMFY_MAX_SIZE: Final = 16384
COMFY_MAX_STEPS: Final = 10000
COMFY_MAX_BATCH: Final = 4096
COMFY_MAX_CFG: Final = 100.0
# Drawn seeds stay below 2**53 so that every client (JavaScript included) shows and sends them back exactly.
DRAWN_SEED_LIMIT: Final = 2**53
MAX_PROMPT_CHARS: Final = 32_000
MAX_IMAGE_NAME_CHARS: Final = 255
SIZE_MULTIPLES: Final = (8, 16, 32, 64)


@dataclass(frozen=True)
class ParameterInfo:
    type: Literal["string", "integer", "number", "image"]
    description: str
    slot_types: tuple[builtins.type, ...]  # what the workflow input it goes to must hold (its exported value)


PARAMETERS: Final[dict[ParameterName, ParameterInfo]] = {
    "prompt": ParameterInfo("string", "What the result should show.", (str,)),
    "negative_prompt": ParameterInfo("string", "What the result must not show.", (str,)),
    "seed": ParameterInfo("integer", "Random seed; the same seed and parameters give the same result.", (int,)),
    "width": ParameterInfo("integer", "Width of the result in pixels.", (int,)),
    "height": ParameterInfo("integer", "Height of the result in pixels.", (int,)),
    "steps": ParameterInfo("integer", "Sampling steps: more are slower and often more detailed.", (int,)),
    "cfg": ParameterInfo("number", "Guidance scale: how closely the result follows the prompt.", (int, float)),
    "batch_size": ParameterInfo("integer", "How many results one run makes.", (int,)),
    "denoise": ParameterInfo(
        "number", "How much of the input is repainted: 1 ignores it, lower values keep more of it.", (int, float)
    ),
    "input_image": ParameterInfo("image", "The image to start from (its file name on the ComfyUI instance).", (str,)),
}
PARAMETER_ORDER: Final[tuple[ParameterName, ...]] = tuple(PARAMETERS)


def _invalid(message: str, field: str, details: dict[str, object] | None = None) -> HubError:
    return HubError(ErrorCode.INVALID_REQUEST, message, field=field, details=details)


# -- single values ------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int, high: int, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"`{name}` must be a whole number, not {value!r}", field)
    if not low <= value <= high:
        raise _invalid(f"`{name}` must be between {low} and {high} (got {value})", field, {"min": low, "max": high})
    return value


def _check_float(name: str, value: Any, low: float, high: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"`{name}` must be a number, not {value!r}", field)
    if not low <= value <= high:
        raise _invalid(
            f"`{name}` must be between {low:g} and {high:g} (got {value:g})", field, {"min": low, "max": high}
        )
    return float(value)


def _check_size(name: str, value: Any, limits: RenderLimits, field: str) -> int:
    size = _check_int(name, value, limits.min_size, limits.max_size, field)
    multiple = limits.size_multiple
    if size % multiple:
        lower = max(size - size % multiple, limits.min_size)
        upper = min(lower + multiple, limits.max_size)
        raise _invalid(
            f"`{name}` must be a multiple of {multiple} (got {size}); use e.g. {lower} or {upper}",
            field,
            {"multiple_of": multiple, "nearest": sorted({lower, upper})},
        )
    return size


def _check_text(name: str, value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"`{name}` must be text", field)
    if len(value) > MAX_PROMPT_CHARS:
        raise _invalid(f"`{name}` is {len(value)} characters long; at most {MAX_PROMPT_CHARS} are accepted", field)
    return value


def _check_image_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("`input_image` must be the file name of an image uploaded to the ComfyUI instance", field)
    parts = value.replace("\\", "/").split("/")
    if len(value) > MAX_IMAGE_NAME_CHARS or value.startswith("/") or "\\" in value or "\0" in value or ".." in parts:
        raise _invalid(
            f"`input_image` {value!r} is not a plain file name inside ComfyUI's input folder (e.g. 'photo.png' "
            f"or 'hub/photo.png': no '..', no leading '/', at most {MAX_IMAGE_NAME_CHARS} characters)",
            field,
        )
    return value


def check_value(name: ParameterName, value: Any, limits: RenderLimits, field: str) -> Any:
    """The value, normalised (floats for number parameters), or an error naming `field`."""
    if name in ("prompt", "negative_prompt"):
        return _check_text(name, value, field)
    if name == "seed":
        return _check_int(name, value, 0, COMFY_MAX_SEED, field)
    if name in ("width", "height"):
        return _check_size(name, value, limits, field)
    if name == "steps":
        return _check_int(name, value, 1, limits.max_steps, field)
    if name == "cfg":
        return _check_float(name, value, 0.0, COMFY_MAX_CFG, field)
    if name == "batch_size":
        return _check_int(name, value, 1, limits.max_batch_size, field)
    if name == "denoise":
        return _check_float(name, value, 0.0, 1.0, field)
    return _check_image_name(value, field)


# -- a render type's definition -----------------------------------------------------------------------


def check_limits(limits: RenderLimits, field: str) -> None:
    if limits.size_multiple not in SIZE_MULTIPLES:
        raise _invalid(
            f"`size_multiple` must be one of {', '.join(map(str, SIZE_MULTIPLES))} (got {limits.size_multiple})",
            f"{field}.size_multiple",
        )
    _check_int("min_size", limits.min_size, limits.size_multiple, COMFY_MAX_SIZE, f"{field}.min_size")
    _check_int("max_size", limits.max_size, limits.min_size, COMFY_MAX_SIZE, f"{field}.max_size")
    if limits.min_size % limits.size_multiple or limits.max_size % limits.size_multiple:
        raise _invalid(
            f"`min_size` and `max_size` must be multiples of `size_multiple` ({limits.size_multiple})",
            f"{field}.min_size",
        )
    _check_int("max_steps", limits.max_steps, 1, COMFY_MAX_STEPS, f"{field}.max_steps")
    _check_int("max_batch_size", limits.max_batch_size, 1, COMFY_MAX_BATCH, f"{field}.max_batch_size")


def default_of(name: ParameterName, defaults: RenderDefaults) -> Any:
    """The render type's default for a parameter; None where there is none (prompt, seed, input image)."""
    if name == "negative_prompt":
        return defaults.negative_prompt
    return getattr(defaults, name, None)


def check_defaults(defaults: RenderDefaults, limits: RenderLimits, parameter_map: ParameterMap, field: str) -> None:
    """The defaults of the parameters the render type takes must themselves be valid requests."""
    for name in parameter_map.slots:
        value = default_of(name, defaults)
        if value is not None:
            check_value(name, value, limits, f"{field}.{name}")


def check_map(workflow: dict[str, Any], parameter_map: ParameterMap, field: str) -> None:
    """Every slot must point at an existing input of an existing node that holds a value of the right type."""
    owner: dict[tuple[str, str], str] = {}
    for name, slots in parameter_map.slots.items():
        info = PARAMETERS[name]
        for index, slot in enumerate(slots):
            where = f"{field}.slots.{name}[{index}]"
            node = workflow.get(slot.node_id)
            if node is None:
                raise _invalid(
                    f"`{name}` is mapped to node {slot.node_id}, which is not in the workflow",
                    where,
                    {"nodes": {n: workflow[n]["class_type"] for n in node_ids_in_order(workflow)}},
                )
            here = f"input `{slot.input_name}` of {describe_node(workflow, slot.node_id)}"
            inputs = node["inputs"]
            if slot.input_name not in inputs:
                raise _invalid(
                    f"`{name}` is mapped to {here}, which has no such input",
                    where,
                    {"inputs": sorted(inputs)},
                )
            value = inputs[slot.input_name]
            if is_link(value):
                raise _invalid(
                    f"`{name}` is mapped to {here}, which is linked from {describe_node(workflow, value[0])}; "
                    "map it to the input of that node that holds the value instead",
                    where,
                )
            if isinstance(value, bool) or not isinstance(value, info.slot_types):
                expected = " or ".join("text" if t is str else "a number" for t in info.slot_types)
                raise _invalid(
                    f"`{name}` is mapped to {here}, which holds {value!r}; `{name}` needs an input holding "
                    f"{'a whole number' if info.slot_types == (int,) else expected}",
                    where,
                )
            key = (slot.node_id, slot.input_name)
            if key in owner and owner[key] != name:
                raise _invalid(f"{here} is mapped to both `{owner[key]}` and `{name}`; give it to one of them", where)
            owner[key] = name


def parameter_specs(render_type: RenderType) -> list[ParameterSpec]:
    """The parameters a render type takes, described for a caller choosing values (e.g. an LLM)."""
    specs: list[ParameterSpec] = []
    for name in PARAMETER_ORDER:
        if not render_type.parameter_map.slots.get(name):
            continue
        info = PARAMETERS[name]
        spec = ParameterSpec(name=name, type=info.type, description=info.description)
        _bound(spec, render_type.limits)
        default = default_of(name, render_type.defaults)
        if name == "negative_prompt" and not default:
            default = None
        spec.default = default
        specs.append(spec)
    return specs


def _bound(spec: ParameterSpec, limits: RenderLimits) -> None:
    """A request passes the generation request's limits first, then the render type's: advertise both at once."""
    name = spec.name
    if name in ("width", "height"):
        spec.minimum = max(limits.min_size, REQUEST_MIN_SIZE)
        spec.maximum, spec.multiple_of = min(limits.max_size, REQUEST_MAX_SIZE), limits.size_multiple
    elif name == "steps":
        spec.minimum, spec.maximum = 1, min(limits.max_steps, REQUEST_MAX_STEPS)
    elif name == "batch_size":
        spec.minimum, spec.maximum = 1, min(limits.max_batch_size, REQUEST_MAX_COUNT)
    elif name == "cfg":
        spec.minimum, spec.maximum = 0.0, min(COMFY_MAX_CFG, REQUEST_MAX_CFG)
    elif name == "denoise":
        spec.minimum, spec.maximum = 0.0, 1.0
    elif name == "seed":
        spec.minimum, spec.maximum = 0, min(COMFY_MAX_SEED, REQUEST_MAX_SEED)
        spec.description += " Omit it for a random one (the one used is reported)."
    elif name in ("input_image", "prompt"):
        spec.required = True


# -- resolving a request ------------------------------------------------------------------------------


def _given(params: GenerationParams, name: ParameterName) -> Any:
    value = getattr(params, name)
    return None if value == "" else value


def resolve(render_type: RenderType, params: GenerationParams, rng: random.Random | None = None) -> ResolvedWorkflow:
    """The render type's workflow with the request's parameters (or the defaults) injected, every value checked."""
    slots = render_type.parameter_map.slots
    used = GenerationParams()
    ignored: list[ParameterName] = []
    values: dict[ParameterName, Any] = {}
    for name in PARAMETER_ORDER:
        given = _given(params, name)
        if not slots.get(name):
            if given is not None:
                ignored.append(name)
            continue
        value = given
        if value is None:
            if name == "seed":
                value = (rng or random.SystemRandom()).randrange(DRAWN_SEED_LIMIT)
            elif name == "input_image":
                raise _invalid(
                    f"render type {render_type.name!r} starts from an input image; give `input_image` (the file "
                    "name of the image uploaded to the ComfyUI instance)",
                    "params.input_image",
                )
            elif name == "prompt":
                value = ""
            else:
                value = default_of(name, render_type.defaults)
        values[name] = check_value(name, value, render_type.limits, f"params.{name}")
        setattr(used, name, values[name])
    workflow = copy.deepcopy(render_type.workflow)
    for name, value in values.items():
        for slot in slots[name]:
            workflow[slot.node_id]["inputs"][slot.input_name] = value
    return ResolvedWorkflow(
        render_type=render_type.name,
        version=render_type.version,
        workflow=workflow,
        params=used,
        requirements=render_type.requirements,
        output_kind=render_type.output_kind,
        ignored=ignored,
        parameter_map=render_type.parameter_map,
    )
