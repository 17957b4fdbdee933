"""A ComfyUI 0.3.64 test double: an aiohttp server speaking the recorded HTTP + WebSocket protocol.

Every behaviour here mirrors an exchange recorded from an unmodified ComfyUI 0.3.64 (see
`tests/data/comfyui-0.3.64/README.md`); where the recordings are silent, ComfyUI's own `server.py` /
`execution.py` were followed, quirks included (they are what a real client meets). Nothing is rendered:
a job sleeps `work_seconds / speed`, spread over the nodes it executes, and image outputs are small
solid-colour PNGs. A model loader node that runs (its output not cached from the previous prompt, as in
ComfyUI) also sleeps `model_switch_seconds` first: switching models costs time, reusing them costs nothing
(`POST /free` unloads them). Fault injection (`go_down`, `drop_websockets`, `hang`, `fail_next_job`) is
toggled at run time; `sampler_previews` sends a preview image frame with each sampler step, as ComfyUI started
with `--preview-method` does.

In-process:   `async with ComfyUIDouble(speed=2) as comfy: ...comfy.url...`
Standalone:   `python tests/doubles/comfyui.py --port 8188 --speed 2 --work-seconds 0.5`
              (runs until SIGTERM/SIGINT; prints one `... listening on URL` line when ready)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import heapq
import io
import ipaddress
import json
import logging
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

try:
    from doubles.png import encode_solid_png, looks_like_image, png_size
    from doubles.served import Served, serve_until_signalled
except ImportError:  # run as a script: tests/doubles itself is sys.path[0]
    from png import encode_solid_png, looks_like_image, png_size  # type: ignore[no-redef]
    from served import Served, serve_until_signalled

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "data" / "comfyui-0.3.64"
# What makes the file of a SaveImage/PreviewImage output: (width, height, colour, tEXt chunks) -> PNG bytes.
PngMaker = Callable[[int, int, tuple[int, ...], dict[str, str] | None], bytes]

COMFYUI_VERSION = "0.3.64"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
MAX_HISTORY_SIZE = 10000
DEFAULT_VRAM_TOTAL = 24 * 1024**3
RAM_TOTAL, RAM_FREE = 25276063744, 23959756800  # the recording machine's figures

# `/models` of the recording server, in its order; a double's own `models` keys are appended.
MODEL_FOLDERS = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
]
DEFAULT_MODELS: dict[str, list[str]] = {"checkpoints": ["v1-5-pruned-emaonly.safetensors"]}

# Combo inputs that ComfyUI fills from a model folder (empty in object_info-full.json: the recording
# machine had no weights). The double fills them from its `models`, so a missing model is a
# `value_not_in_list` validation error exactly as on a real server.
MODEL_INPUT_FOLDERS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name1"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name2"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name4"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
    ("DiffusersLoader", "model_path"): "diffusers",
}
LOADER_CLASSES = frozenset(class_type for class_type, _ in MODEL_INPUT_FOLDERS)
IMAGE_INPUT_CLASSES = ("LoadImage", "LoadImageMask")  # their `image` combo lists the input folder
# Inputs checked by the node's VALIDATE_INPUTS instead of the generic range/combo checks.
CUSTOM_VALIDATED_INPUTS = {"LoadImage": "image", "LoadImageMask": "image"}
PRIMITIVE_CLASSES = {
    "PrimitiveString",
    "PrimitiveStringMultiline",
    "PrimitiveInt",
    "PrimitiveFloat",
    "PrimitiveBoolean",
}
NEVER_CACHED_CLASSES = {"SaveImageWebsocket"}  # its IS_CHANGED returns the time
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
IMAGE_LINK_NAMES = ("images", "image", "samples", "latent_image", "latent", "pixels")
PREVIEW_SUFFIX_ALPHABET = "abcdefghijklmnopqrstupvxyz"  # sic: ComfyUI's PreviewImage alphabet
BINARY_PREVIEW_IMAGE, BINARY_PREVIEW_WITH_METADATA, PNG_FORMAT_CODE = 1, 4, 2

log = logging.getLogger("comfyui_double")


# --------------------------------------------------------------------------- small helpers


def _now_ms() -> int:
    return int(time.time() * 1000)


def _abspath(path: str | Path) -> str:
    """os.path.abspath semantics (normalises `..`), which ComfyUI's path checks rely on."""
    return os.path.normpath(Path(path).absolute())


def _is_link(value: Any) -> bool:
    """ComfyUI's graph_utils.is_link: a 2-element [node_id: str, output_index: number] list."""
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int | float)
    )


def _full_type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _error(kind: str, message: str, details: str, extra_info: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def _empty(status: int = 200) -> web.Response:
    """ComfyUI's bodiless answers: Content-Length 0 and no Content-Type."""
    return web.Response(status=status)


def _upload_folder(upload_dir: str, subfolder: str, filename: str) -> Path | None:
    """The folder an upload goes to, or None when `subfolder`/`filename` would escape `upload_dir`."""
    folder = Path(upload_dir, os.path.normpath(subfolder))
    if os.path.commonpath((upload_dir, _abspath(folder / filename))) != upload_dir:
        return None
    return folder


def _strip_extension(name: str) -> str:
    return str(Path(name).with_suffix("")) if Path(name).suffix else name


@lru_cache(maxsize=1)
def _recorded_object_info() -> dict[str, Any]:
    """The full /object_info of the recording server (478 classes), loaded once per process."""
    with (PROTOCOL_DIR / "object_info-full.json").open(encoding="utf-8") as handle:
        return json.load(handle)


class _Opaque:
    """A node output the double cannot compute (a tensor, a model...): only its origin is known."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __str__(self) -> str:
        return self.description


def _format_input_value(value: Any) -> Any:
    """execution.py's format_value, used for `current_inputs` of execution_error."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


# --------------------------------------------------------------------------- validation (execution.py port)


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """execution.validate_node_input: exact match, `*` wildcard, or overlapping comma-separated types."""
    if received_type == input_type:
        return True
    if _is_combo_type(received_type) and _is_combo_type(input_type):
        return True  # a primitive/combo output feeding a combo widget
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {part.strip() for part in received_type.split(",")}
    wanted = {part.strip() for part in input_type.split(",")}
    if "*" in received or "*" in wanted:
        return True
    return bool(received & wanted)


def _is_combo_type(input_type: Any) -> bool:
    return isinstance(input_type, list) or input_type == "COMBO"


def _declared_inputs(class_info: dict[str, Any]) -> list[str]:
    required = list(class_info["input"].get("required", {}))
    return required + [name for name in class_info["input"].get("optional", {}) if name not in required]


def _input_spec(class_info: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any]]:
    """(input_type, category, extra_info) like comfy_execution.graph.get_input_info."""
    for category in ("required", "optional", "hidden"):
        section = class_info["input"].get(category, {})
        if name in section:
            config = section[name] if category != "hidden" else [section[name]]
            return config[0], category, (config[1] if len(config) > 1 else {})
    return None, None, {}


def _convert_literal(value: Any, input_type: Any) -> Any:
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        return float(value)
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)
    return value


def _range_error(name: str, value: Any, info: list[Any]) -> dict[str, Any] | None:
    extra = info[1]
    extra_info = {"input_name": name, "input_config": info, "received_value": value}
    if "min" in extra and value < extra["min"]:
        message = "Value {} smaller than min of {}".format(value, extra["min"])
        return _error("value_smaller_than_min", message, name, extra_info)
    if "max" in extra and value > extra["max"]:
        message = "Value {} bigger than max of {}".format(value, extra["max"])
        return _error("value_bigger_than_max", message, name, extra_info)
    return None


def _combo_error(name: str, value: Any, info: list[Any]) -> dict[str, Any] | None:
    input_type, extra = info
    if not _is_combo_type(input_type):
        return None
    options = extra.get("options", []) if input_type == "COMBO" else input_type
    if extra.get("multiselect", False) and isinstance(value, list):
        invalid = [item for item in value if item not in options]
    else:
        invalid = [] if value in options else [value]
    if not invalid:
        return None
    input_config: list[Any] | None = info
    list_info = str(options)
    if len(options) > 20:  # ComfyUI does not echo gigantic model lists
        list_info, input_config = f"(list of length {len(options)})", None
    extra_info = {"input_name": name, "input_config": input_config, "received_value": value}
    return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {list_info}", extra_info)


Validated = dict[Any, tuple[bool, list[dict[str, Any]], Any]]


class PromptValidator:
    """A port of ComfyUI 0.3.64's validate_prompt/validate_inputs driven by an /object_info dict.

    Kept faithful on purpose, quirks included: validation converts literal inputs in place (the queued
    prompt shows the converted values), and `dependent_outputs` lists every failing output evaluated
    after a node failed, not only that node's descendants.
    """

    def __init__(self, object_info: dict[str, Any], image_exists: Callable[[str], bool]) -> None:
        self._object_info = object_info
        self._image_exists = image_exists

    def validate(
        self, prompt: dict[str, Any], partial_targets: list[str] | None = None
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        """(valid, error, outputs_to_execute, node_errors) like execution.validate_prompt."""
        problem, outputs = self._output_nodes(prompt, partial_targets)
        if problem is not None:
            return False, problem, [], {}
        good: list[str] = []
        failures: list[list[dict[str, Any]]] = []
        node_errors: dict[str, Any] = {}
        validated: Validated = {}
        for output_id in outputs:
            valid, reasons = self._validate_output(prompt, output_id, validated)
            if valid:
                good.append(output_id)
                continue
            failures.append(reasons)
            self._record_node_errors(prompt, output_id, validated, node_errors)
        if good:
            return True, None, good, node_errors
        details = "\n".join(f"{reason['message']}: {reason['details']}" for group in failures for reason in group)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {})
        return False, error, good, node_errors

    def _output_nodes(
        self, prompt: dict[str, Any], partial_targets: list[str] | None
    ) -> tuple[dict[str, Any] | None, list[str]]:
        outputs: list[str] = []
        for node_id in prompt:
            node = prompt[node_id]
            if "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'", {}), []
            class_type = node["class_type"]
            class_info = self._object_info.get(class_type)
            if class_info is None:
                message = f"Cannot execute because node {class_type} does not exist."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'", {}), []
            if class_info.get("output_node") is True and (partial_targets is None or node_id in partial_targets):
                outputs.append(node_id)
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs", "", {}), []
        return None, outputs

    def _validate_output(
        self, prompt: dict[str, Any], output_id: str, validated: Validated
    ) -> tuple[bool, list[dict[str, Any]]]:
        try:
            valid, reasons, _ = self._validate_inputs(prompt, output_id, validated)
        except Exception as exc:
            extra_info = {
                "exception_type": _full_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__),
            }
            reasons = [_error("exception_during_validation", "Exception when validating node", str(exc), extra_info)]
            validated[output_id] = (False, reasons, output_id)
            return False, reasons
        return valid is True, reasons

    @staticmethod
    def _record_node_errors(
        prompt: dict[str, Any], output_id: str, validated: Validated, node_errors: dict[str, Any]
    ) -> None:
        for node_id, (valid, reasons, _) in validated.items():
            if valid is True or not reasons:
                continue  # downstream nodes of a broken one are invalid but carry no error of their own
            if node_id not in node_errors:
                class_type = prompt[node_id]["class_type"]
                node_errors[node_id] = {"errors": reasons, "dependent_outputs": [], "class_type": class_type}
            node_errors[node_id]["dependent_outputs"].append(output_id)

    def _validate_inputs(
        self, prompt: dict[str, Any], unique_id: Any, validated: Validated
    ) -> tuple[bool, list[dict[str, Any]], Any]:
        if unique_id in validated:
            return validated[unique_id]
        node = prompt[unique_id]
        inputs = node["inputs"]
        class_info = self._object_info[node["class_type"]]
        custom_input = CUSTOM_VALIDATED_INPUTS.get(node["class_type"])
        errors: list[dict[str, Any]] = []
        valid = True
        for name in _declared_inputs(class_info):
            input_type, category, extra = _input_spec(class_info, name)
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _error("required_input_missing", "Required input is missing", name, {"input_name": name})
                    )
                continue
            if isinstance(inputs[name], list):
                error, upstream_ok = self._check_link(prompt, name, inputs[name], [input_type, extra], validated)
                valid = valid and upstream_ok
            else:
                error = self._check_literal(inputs, name, [input_type, extra], custom=name == custom_input)
            if error is not None:
                errors.append(error)
        errors.extend(self._custom_validation(custom_input, inputs))
        result = (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
        validated[unique_id] = result
        return result

    def _check_link(
        self, prompt: dict[str, Any], name: str, value: list[Any], info: list[Any], validated: Validated
    ) -> tuple[dict[str, Any] | None, bool]:
        if len(value) != 2:
            message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            extra_info = {"input_name": name, "input_config": info, "received_value": value}
            return _error("bad_linked_input", message, name, extra_info), True
        source_class = prompt[value[0]]["class_type"]  # KeyError for a missing node, as in ComfyUI
        received_type = tuple(self._object_info[source_class]["output"])[value[1]]  # IndexError
        if not validate_node_input(received_type, info[0]):
            details = f"{name}, received_type({received_type}) mismatch input_type({info[0]})"
            extra_info = {
                "input_name": name,
                "input_config": info,
                "received_type": received_type,
                "linked_node": value,
            }
            return _error(
                "return_type_mismatch", "Return type mismatch between linked nodes", details, extra_info
            ), True
        return None, self._upstream_valid(prompt, name, value, info, validated)

    def _upstream_valid(
        self, prompt: dict[str, Any], name: str, value: list[Any], info: list[Any], validated: Validated
    ) -> bool:
        try:
            return self._validate_inputs(prompt, value[0], validated)[0] is not False
        except Exception as exc:
            extra_info = {
                "input_name": name,
                "input_config": info,
                "exception_message": str(exc),
                "exception_type": _full_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__),
                "linked_node": value,
            }
            reason = _error(
                "exception_during_inner_validation",
                "Exception when validating inner node",
                str(exc),
                extra_info,
            )
            validated[value[0]] = (False, [reason], value[0])
            return False

    @staticmethod
    def _check_literal(inputs: dict[str, Any], name: str, info: list[Any], *, custom: bool) -> dict[str, Any] | None:
        value = inputs[name]
        if isinstance(value, dict) and "__value__" in value:  # a literal list, wrapped so it is no link
            value = inputs[name] = value["__value__"]
        try:
            value = inputs[name] = _convert_literal(value, info[0])
        except Exception as exc:
            extra_info = {
                "input_name": name,
                "input_config": info,
                "received_value": value,
                "exception_message": str(exc),
            }
            message = f"Failed to convert an input value to a {info[0]} value"
            return _error("invalid_input_type", message, f"{name}, {value}, {exc}", extra_info)
        if custom:
            return None  # the node's VALIDATE_INPUTS owns this input: no range or combo check
        return _range_error(name, value, info) or _combo_error(name, value, info)

    def _custom_validation(self, custom_input: str | None, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """LoadImage.VALIDATE_INPUTS: the file must exist (its content is only read at run time)."""
        if custom_input is None or custom_input not in inputs or isinstance(inputs[custom_input], list):
            return []
        name = str(inputs[custom_input])
        if self._image_exists(name):
            return []
        details = f"{custom_input} - Invalid image file: {name}"
        return [
            _error(
                "custom_validation_failed",
                "Custom validation failed for node",
                details,
                {"input_name": custom_input},
            )
        ]


# --------------------------------------------------------------------------- execution planning


class _ExecutionList:
    """comfy_execution.graph.ExecutionList, reduced to what decides the order nodes run in.

    Only outputs and their uncached ancestors are staged; among ready nodes an output node goes
    first, then one feeding an output, then one two steps away (ux_friendly_pick_node).
    """

    def __init__(
        self, prompt: dict[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ) -> None:
        self._prompt = prompt
        self._is_cached = is_cached
        self._is_output = is_output
        self.pending: dict[str, None] = {}
        self._blockers: dict[str, set[str]] = {}
        self._blocking: dict[str, dict[str, None]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            unique_id = stack.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = None
            self._blockers[unique_id] = set()
            self._blocking[unique_id] = {}
            for value in self._prompt[unique_id]["inputs"].values():
                if _is_link(value):
                    if not self._is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], unique_id))
        for source, target in links:
            if not self._is_cached(source):
                self.add_node(source)
                self._blocking[source][target] = None
                self._blockers[target].add(source)

    def next_node(self) -> str | None:
        if not self.pending:
            return None
        ready = [node_id for node_id in self.pending if not self._blockers[node_id]]
        if not ready:
            raise _CycleError(next(iter(self.pending)))
        return self._pick(ready)

    def _pick(self, ready: list[str]) -> str:
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(blocked) for blocked in self._blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self._blocking[node_id]:
                if any(self._is_output(second) for second in self._blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        self._blockers.pop(node_id, None)
        for blocked in self._blocking.pop(node_id):
            self._blockers[blocked].discard(node_id)


class _ProgressRegistry:
    """comfy_execution.progress state: the snapshot sent in every `progress_state` message."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self._nodes: dict[str, dict[str, Any]] = {}

    def _entry(self, node_id: str) -> dict[str, Any]:
        # a node first seen when it finishes (a cached output) keeps these ints: 1/1, as recorded
        return self._nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def start(self, node_id: str) -> None:
        self._entry(node_id).update(state="running", value=0.0, max=1.0)

    def update(self, node_id: str, value: int, maximum: int) -> None:
        self._entry(node_id).update(state="running", value=value, max=maximum)

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry.update(state="finished", value=entry["max"])

    def snapshot(self) -> dict[str, Any]:
        nodes = {
            node_id: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, entry in self._nodes.items()
            if entry["state"] != "pending"
        }
        return {"prompt_id": self.prompt_id, "nodes": nodes}


# --------------------------------------------------------------------------- job state


@dataclass
class _QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")

    def as_list(self) -> list[Any]:
        """The 5-element tuple that /queue and /history show."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class _Job:
    item: _QueueItem
    progress: _ProgressRegistry
    work_per_node: float = 0.0
    messages: list[list[Any]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    ui_outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _CacheEntry:
    ui: dict[str, Any] | None
    loader: bool = False  # a model loader's output: dropped by POST /free


@dataclass
class _ImageSpec:
    width: int
    height: int
    batch: int
    color: tuple[int, int, int]


@dataclass
class _InjectedFailure:
    exception_type: str
    message: str
    node: str | None


class _InterruptError(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class _CycleError(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class _NodeExecutionError(Exception):
    """A node raised at run time: becomes `execution_error`."""

    def __init__(self, node_id: str, exception_type: str, message: str, tb: list[str]) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.exception_type = exception_type
        self.message = message
        self.traceback = tb
        self.current_inputs: dict[str, Any] = {}


def _save_image_path(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """folder_paths.get_save_image_path: (folder, filename, next counter, subfolder); refuses escapes."""
    if "%" in prefix:
        prefix = _compute_prefix_vars(prefix, width, height)
    subfolder, filename = os.path.split(os.path.normpath(prefix))
    full_folder = _abspath(Path(output_dir, subfolder))
    common = os.path.commonpath((output_dir, full_folder))
    if common != output_dir:
        raise Exception(  # the real message, which clients may show to users
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {full_folder}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}"
        )
    return (
        full_folder,
        filename,
        _next_counter(Path(full_folder), filename, len(Path(prefix).name)),
        subfolder,
    )


def _compute_prefix_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in (("%width%", width), ("%height%", height), ("%year%", now.tm_year)):
        prefix = prefix.replace(key, str(value))
    for key, number in (
        ("%month%", now.tm_mon),
        ("%day%", now.tm_mday),
        ("%hour%", now.tm_hour),
        ("%minute%", now.tm_min),
        ("%second%", now.tm_sec),
    ):
        prefix = prefix.replace(key, str(number).zfill(2))
    return prefix


def _next_counter(folder: Path, filename: str, prefix_len: int) -> int:
    """One more than the highest `<filename>_<counter>_...` already in the folder, else 1."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        return 1
    best = 0
    for existing in (entry.name for entry in folder.iterdir()):
        prefix = existing[: prefix_len + 1]
        if os.path.normcase(prefix[:-1]) != os.path.normcase(filename) or prefix[-1:] != "_":
            continue
        with contextlib.suppress(ValueError):
            best = max(best, int(existing[prefix_len + 1 :].split("_")[0]))
    return best + 1


# --------------------------------------------------------------------------- middlewares


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        for *_, sockaddr in infos:
            if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                return loopback
            loopback = True
    return loopback


def _origin_mismatch(host: str, origin: str) -> bool:
    """server.py's anti-CSRF rule: on a loopback Host, Origin's host[:port] must equal Host's."""
    host_domain: str | None = host.lower()
    parsed = urllib.parse.urlparse(origin)
    origin_domain: str | None = parsed.netloc.lower()
    host_parsed = urllib.parse.urlsplit("//" + host.lower())
    loopback = _is_loopback(host_parsed.hostname)
    if parsed.port is None:  # an origin without port is compared without the host's port, and back
        host_domain = host_parsed.hostname
    if host_parsed.port is None:
        origin_domain = parsed.hostname
    return bool(loopback and host_domain and origin_domain and host_domain != origin_domain)


@web.middleware
async def _origin_only_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host is not None and origin is not None and _origin_mismatch(host, origin):
        return _empty(403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


# --------------------------------------------------------------------------- the double


class ComfyUIDouble(Served):
    """An in-process (or standalone) ComfyUI 0.3.64 look-alike on 127.0.0.1.

    Introspection for assertions: `prompts_received` (bodies of accepted POST /prompt, as sent),
    `executed_prompt_ids` (prompts taken by the worker, in run order), `running`, `pending`, `history`.
    """

    def __init__(
        self,
        *,
        speed: float = 1.0,
        work_seconds: float = 0.05,
        object_info: dict[str, Any] | None = None,
        models: dict[str, list[str]] | None = None,
        model_switch_seconds: float | dict[str, float] = 0.0,
        device_name: str = "cpu",
        vram_total: int = DEFAULT_VRAM_TOTAL,
        output_dir: Path | None = None,
        name: str = "comfy",
        host: str = "127.0.0.1",
        sampler_previews: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.work_seconds = work_seconds
        self.models = copy.deepcopy(DEFAULT_MODELS if models is None else models)
        # Seconds a loader node takes to load its model: one figure, or per model file name (unlisted: 0).
        self.model_switch_seconds = model_switch_seconds
        # (model file names, seconds) of every model load the worker simulated: benchmarks sum them.
        self.model_loads: list[tuple[tuple[str, ...], float]] = []
        self.device_name = device_name
        self.vram_total = vram_total
        # As ComfyUI started with `--preview-method`: a sampler's every step sends a preview image frame.
        self.sampler_previews = sampler_previews
        # Every image a SaveImageWebsocket node sent (bytes after the frame header), in order: tests compare.
        self.websocket_images: list[bytes] = []
        # What SaveImage/PreviewImage files hold: (width, height, colour, tEXt chunks) -> PNG bytes, one colour by
        # default; a benchmark sets a maker of photo-like PNGs, whose decode costs what a real output's does.
        self.png_maker: PngMaker = encode_solid_png
        self.name = name
        self.host = host
        self.port = 0
        self._log = log.getChild(name)
        self._init_dirs(output_dir)
        self._object_info = self._with_models(_recorded_object_info() if object_info is None else object_info)
        self._validator = PromptValidator(self._object_info, self._image_exists)
        self.prompts_received: list[dict[str, Any]] = []
        self.executed_prompt_ids: list[str] = []
        # (start, end) of every job the worker ran, perf_counter seconds: benchmarks read idle gaps from it.
        self.job_spans: list[tuple[float, float]] = []
        # (perf_counter, filename) of every GET /view, in order: when each output was fetched.
        self.view_requests: list[tuple[float, str]] = []
        self.failing_views = 0  # the next this many GET /view are answered 500 (a hiccup of the server)
        self.preview_requests: list[str] = []  # the `preview=` of every GET /view that asked for one, in order
        self.failing_previews = 0  # the next this many GET /view with `preview=` are answered 500
        self.history: dict[str, dict[str, Any]] = {}
        self._number = 0
        self._seq = 0
        self._heap: list[tuple[Any, str, int, _QueueItem]] = []
        self._running: _QueueItem | None = None
        self._cache: dict[str, _CacheEntry] = {}
        self._preview_suffixes: dict[str, str] = {}
        self._interrupt_requested = False
        self._next_failure: _InjectedFailure | None = None
        self._client_id: str | None = None  # server.client_id: the running (or last) prompt's client
        self._last_node_id: str | None = None
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._socket_flags: dict[str, dict[str, Any]] = {}
        self._ws_requests: dict[int, web.Request] = {}  # by id(): requests are unhashable
        self._outbox: asyncio.Queue[tuple[str | None, str | bytes]] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._not_hung = asyncio.Event()
        self._not_hung.set()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------- lifecycle

    def _init_dirs(self, output_dir: Path | None) -> None:
        self._root = Path(tempfile.mkdtemp(prefix=f"comfyui-double-{self.name}-")).resolve()
        output = Path(output_dir).resolve() if output_dir is not None else self._root / "output"
        for folder in (output, self._root / "input", self._root / "temp"):
            folder.mkdir(parents=True, exist_ok=True)
        self.output_dir, self.input_dir, self.temp_dir = output, self._root / "input", self._root / "temp"
        self._dirs = {"output": str(output), "input": str(self.input_dir), "temp": str(self.temp_dir)}

    async def start(self, port: int = 0) -> None:
        """Start the worker and listen on 127.0.0.1:`port` (0 = a free port, see `.port`)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._worker_loop()),
                asyncio.create_task(self._publish_loop()),
            ]
        await self._listen(port)

    async def stop(self) -> None:
        await self.go_down()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        shutil.rmtree(self._root, ignore_errors=True)

    async def _listen(self, port: int) -> None:
        # a short shutdown timeout: hung requests must not delay go_down()/stop() by aiohttp's 60 s
        runner = web.AppRunner(self._build_app(), handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, self.host, port, reuse_address=True).start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def running(self) -> str | None:
        return self._running.prompt_id if self._running is not None else None

    @property
    def pending(self) -> list[str]:
        """Queued prompt ids in the order they will run."""
        return [entry[3].prompt_id for entry in sorted(self._heap, key=lambda entry: entry[:3])]

    # ---------------------------------------------------------------- fault injection

    async def go_down(self) -> None:
        """Stop listening and drop every connection (refused from now on); queue, history and files stay.

        Like a network partition, the worker keeps running: a job may finish while the server is down.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for request in list(self._ws_requests.values()):
            if request.transport is not None:
                request.transport.abort()  # an abrupt loss, as when the host disappears
        await runner.cleanup()

    async def go_up(self) -> None:
        """Listen again on the same port."""
        if self._runner is None:
            await self._listen(self.port)

    async def drop_websockets(self) -> int:
        """Cut every WebSocket abruptly (a proxy or the network dropping them) while HTTP still answers; the
        running job goes on, and what it sends meanwhile reaches nobody. Returns how many were cut."""
        requests = [r for r in self._ws_requests.values() if r.transport is not None]
        for request in requests:
            request.transport.abort()  # type: ignore[union-attr]
        return len(requests)

    def hang(self, on: bool = True) -> None:
        """Accept connections but answer nothing, stall the running job and hold back WS messages."""
        if on:
            self._not_hung.clear()
        else:
            self._not_hung.set()
            self._wakeup.set()

    def fail_next_job(
        self,
        exception_type: str = "RuntimeError",
        message: str = "simulated failure injected by ComfyUIDouble.fail_next_job",
        *,
        node: str | None = None,
    ) -> None:
        """Make the next job that executes a node fail there with `execution_error`.

        `node` (a node id or class_type) picks where; by default the first node actually executed.
        """
        self._next_failure = _InjectedFailure(exception_type, message, node)

    # ---------------------------------------------------------------- object_info and files

    def _with_models(self, object_info: dict[str, Any]) -> dict[str, Any]:
        """A copy of `object_info` whose model combos list this double's models."""
        patched = dict(object_info)
        for (class_type, input_name), folder in MODEL_INPUT_FOLDERS.items():
            if class_type in patched and folder in self.models:
                patched[class_type] = self._with_options(patched[class_type], input_name, self.models[folder])
        return patched

    @staticmethod
    def _with_options(class_info: dict[str, Any], input_name: str, options: list[str]) -> dict[str, Any]:
        class_info = copy.deepcopy(class_info)
        for category in ("required", "optional"):
            config = class_info["input"].get(category, {}).get(input_name)
            if config is None:
                continue
            if config[0] == "COMBO":
                config[1]["options"] = list(options)
            else:  # legacy list combo: keep built-in entries (e.g. VAELoader's taesd ones) after the files
                config[0] = list(options) + [entry for entry in config[0] if entry not in options]
        return class_info

    def _object_info_for(self, class_type: str) -> dict[str, Any]:
        """What /object_info shows for one class: LoadImage's combo is the current input folder."""
        info = self._object_info[class_type]
        if class_type not in IMAGE_INPUT_CLASSES:
            return info
        return self._with_options(info, "image", self._input_images())

    def _input_images(self) -> list[str]:
        return sorted(
            entry.name
            for entry in self.input_dir.iterdir()
            if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS
        )

    def _annotated_path(self, name: str) -> Path:
        """folder_paths.get_annotated_filepath: `name [output]` / `[input]` / `[temp]`, else input."""
        for kind in ("output", "input", "temp"):
            suffix = f" [{kind}]"
            if name.endswith(suffix):
                return Path(self._dirs[kind], name[: -len(suffix)])
        return Path(self._dirs["input"], name)

    def _image_exists(self, name: str) -> bool:
        return self._annotated_path(name).exists()

    def _is_output_class(self, class_type: str) -> bool:
        return self._object_info.get(class_type, {}).get("output_node") is True

    # ---------------------------------------------------------------- HTTP app

    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_UPLOAD_SIZE, middlewares=[self._hang_middleware, _origin_only_middleware]
        )
        gets = [
            ("/ws", self._ws_handler),
            ("/embeddings", self._get_embeddings),
            ("/models", self._get_models),
            ("/models/{folder}", self._get_model_folder),
            ("/extensions", self._get_extensions),
            ("/view", self._get_view),
            ("/system_stats", self._get_system_stats),
            ("/features", self._get_features),
            ("/prompt", self._get_prompt),
            ("/object_info", self._get_object_info),
            ("/object_info/{node_class}", self._get_object_info_node),
            ("/history", self._get_history),
            ("/history/{prompt_id}", self._get_history_item),
            ("/queue", self._get_queue),
        ]
        posts = [
            ("/upload/image", self._post_upload_image),
            ("/prompt", self._post_prompt),
            ("/queue", self._post_queue),
            ("/interrupt", self._post_interrupt),
            ("/free", self._post_free),
            ("/history", self._post_history),
        ]
        for prefix in ("/api", ""):  # server.py registers every route twice
            for path, get_handler in gets:
                app.router.add_get(prefix + path, get_handler)
            for path, post_handler in posts:
                app.router.add_post(prefix + path, post_handler)
        app.router.add_get("/", self._get_root)
        app.router.add_get("/{tail:.*}", self._not_found)
        return app

    @web.middleware
    async def _hang_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        await self._not_hung.wait()
        return await handler(request)

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        """Unknown paths hit the frontend's static route: 404, chunked, octet-stream, empty (as recorded)."""
        response = web.StreamResponse(status=404)
        await response.prepare(request)
        await response.write_eof()
        return response

    async def _get_root(self, request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>ComfyUI (test double)</title>", content_type="text/html")

    async def _get_embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([_strip_extension(name) for name in self.models.get("embeddings", [])])

    def _model_folders(self) -> list[str]:
        return MODEL_FOLDERS + [folder for folder in self.models if folder not in MODEL_FOLDERS]

    async def _get_models(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_folders())

    async def _get_model_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self._model_folders():
            return _empty(404)
        return web.json_response(list(self.models.get(folder, [])))

    async def _get_extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def _get_features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def _get_system_stats(self, request: web.Request) -> web.Response:
        used = self.vram_total // 8 if self._running is not None else 0
        is_cpu = self.device_name == "cpu"
        device = {
            "name": self.device_name,
            "type": "cpu" if is_cpu else "cuda",
            "index": None if is_cpu else 0,
            "vram_total": self.vram_total,
            "vram_free": self.vram_total - used,
            "torch_vram_total": self.vram_total if is_cpu else used,
            "torch_vram_free": self.vram_total - used if is_cpu else 0,
        }
        system = {
            "os": os.name,
            "ram_total": RAM_TOTAL,
            "ram_free": RAM_FREE,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": "2.14.1+cu130",
            "embedded_python": False,
            "argv": ["main.py", "--listen", self.host, "--port", str(self.port), "--name", self.name],
        }
        return web.json_response({"system": system, "devices": [device]})

    async def _get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response({class_type: self._object_info_for(class_type) for class_type in self._object_info})

    async def _get_object_info_node(self, request: web.Request) -> web.Response:
        class_type = request.match_info["node_class"]
        if class_type not in self._object_info:
            return web.json_response({})  # 200 {} for an unknown class, not 404
        return web.json_response({class_type: self._object_info_for(class_type)})

    # ---------------------------------------------------------------- /prompt, /queue, /history, /interrupt

    def _queue_info(self) -> dict[str, Any]:
        remaining = len(self._heap) + (1 if self._running is not None else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    def _take_number(self, body: dict[str, Any]) -> int | float:
        """An explicit `number` is used as given; else the counter (negated by `front`), bumped per POST."""
        if "number" in body:
            return float(body["number"])
        number = self._number
        if body.get("front"):
            number = -number
        self._number += 1
        return number

    async def _post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()  # malformed JSON: aiohttp's own 500 text page, as recorded
        number = self._take_number(body)
        if "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided", {})
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        received = copy.deepcopy(body)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        valid, error, outputs, node_errors = self._validator.validate(prompt, body.get("partial_execution_targets"))
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        self.prompts_received.append(received)
        self._enqueue(_QueueItem(number, prompt_id, prompt, extra_data, outputs))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _enqueue(self, item: _QueueItem) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (item.number, item.prompt_id, self._seq, item))
        self._broadcast_status()
        self._wakeup.set()

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._running.as_list()] if self._running is not None else []
        pending = [entry[3].as_list() for entry in self._heap]  # heap order, like ComfyUI
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._heap.clear()
            self._broadcast_status()
        for prompt_id in body.get("delete", []):
            self._delete_pending(prompt_id)
        return _empty()

    def _delete_pending(self, prompt_id: str) -> None:
        """Only pending prompts can be deleted; the running one is left alone (no status either)."""
        for index, entry in enumerate(self._heap):
            if entry[3].prompt_id == prompt_id:
                self._heap.pop(index)
                heapq.heapify(self._heap)
                self._broadcast_status()
                return

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        target = body.get("prompt_id") if isinstance(body, dict) else None
        if not target or (self._running is not None and self._running.prompt_id == target):
            self._interrupt_requested = True  # cooperative: seen at the next node start or progress step
        return _empty()

    async def _post_free(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict) and (body.get("unload_models") or body.get("free_memory")):
            # The models leave memory: the next prompt runs its loaders again, paying the load.
            self._cache = {key: entry for key, entry in self._cache.items() if not entry.loader}
        return _empty()

    async def _get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for index, prompt_id in enumerate(self.history):
            if index >= offset:
                out[prompt_id] = self.history[prompt_id]
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        if prompt_id not in self.history:
            return web.json_response({})  # unknown, queued or running: 200 {}, never 404
        return web.json_response({prompt_id: self.history[prompt_id]})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return _empty()

    # ---------------------------------------------------------------- /view and /upload/image

    async def _get_view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        self.view_requests.append((time.perf_counter(), query.get("filename", "")))
        if self.failing_views > 0:
            self.failing_views -= 1
            return _empty(500)
        if "filename" not in query:
            return _empty(404)
        located = self._locate_view_file(query)
        if isinstance(located, int):
            return _empty(located)
        filename = located.name
        if not located.is_file():
            return _empty(404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            return await self._view_preview(located, query["preview"], query.get("channel", ""), disposition)
        if query.get("channel", "rgba") != "rgba":
            return await self._view_reencoded(located, query.get("channel", "rgba"), disposition)
        return web.FileResponse(located, headers=disposition)

    async def _view_preview(self, path: Path, preview: str, channel: str, headers: dict[str, str]) -> web.Response:
        """`preview=<format>;<quality>` as server.py answers it: a WebP unless `jpeg` is asked (and `channel` has
        no `a`), quality 90 unless given, a JPEG (or `channel=rgb`) made of the image in RGB. Without Pillow the
        PNG itself is served, as `channel=` answers are."""
        self.preview_requests.append(preview)
        if self.failing_previews > 0:
            self.failing_previews -= 1
            return _empty(500)
        info = preview.split(";")
        image_format = info[0] if info[0] in ("webp", "jpeg") and "a" not in channel else "webp"
        quality = int(info[-1]) if info[-1].isdigit() else 90
        try:
            from PIL import Image
        except ImportError:
            return await self._view_reencoded(path, "rgba", headers)

        def encoded() -> bytes:
            with Image.open(path) as img:
                shown = img.convert("RGB") if image_format == "jpeg" or channel == "rgb" else img
                out = io.BytesIO()
                shown.save(out, format=image_format, quality=quality)
                return out.getvalue()

        return web.Response(
            body=await asyncio.to_thread(encoded), content_type=f"image/{image_format}", headers=headers
        )

    def _locate_view_file(self, query: Any) -> Path | int:
        """The file /view?filename=&subfolder=&type= points at, or the status ComfyUI answers."""
        raw_name: str = query["filename"]
        located = self._annotated_view(raw_name)
        if located is None:
            return 400
        filename, base = located
        if base is None:
            base = self._dirs.get(query.get("type", "output"))
        if base is None:
            return 400
        if "subfolder" in query:
            full = Path(base, query["subfolder"])
            if os.path.commonpath((_abspath(full), base)) != base:
                return 403
            base = str(full)
        return Path(base, Path(filename).name)

    def _annotated_view(self, name: str) -> tuple[str, str | None] | None:
        for kind in ("output", "input", "temp"):
            if name.endswith(f" [{kind}]"):
                name, base = name[: -len(kind) - 3], self._dirs[kind]
                break
        else:
            base = None
        if not name or name[0] == "/" or ".." in name:
            return None
        return name, base

    async def _view_reencoded(self, path: Path, channel: str, headers: dict[str, str]) -> web.Response:
        """`channel=`/`preview=` answers are re-encoded images (no Etag). Without Pillow, the alpha
        channel is synthesised and previews are served as the PNG itself."""
        data = await asyncio.to_thread(path.read_bytes)
        if channel == "a":
            width, height = png_size(data) or (1, 1)
            data = await asyncio.to_thread(encode_solid_png, width, height, (0, 0, 0, 255))
        return web.Response(body=data, content_type="image/png", headers=headers)

    async def _post_upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        upload_type = str(post.get("type") or "input")
        upload_dir = self._dirs.get(upload_type)
        if not isinstance(image, web.FileField) or not image.filename or upload_dir is None:
            return _empty(400)
        subfolder = str(post.get("subfolder", ""))
        folder = _upload_folder(upload_dir, subfolder, image.filename)
        if folder is None:
            return _empty(400)
        content = image.file.read()
        overwrite = post.get("overwrite") in ("true", "1")
        name = await asyncio.to_thread(self._store_upload, folder, image.filename, content, overwrite)
        return web.json_response({"name": name, "subfolder": subfolder, "type": upload_type})

    @staticmethod
    def _store_upload(folder: Path, filename: str, content: bytes, overwrite: bool) -> str:
        """Same name + same bytes is kept as is; other bytes get `name (1).ext` unless `overwrite`."""
        folder.mkdir(parents=True, exist_ok=True)
        stem, suffix = Path(filename).stem, Path(filename).suffix
        target, index = folder / filename, 1
        while not overwrite and target.exists():
            if target.read_bytes() == content:
                return target.name
            target = folder / f"{stem} ({index}){suffix}"
            index += 1
        target.write_bytes(content)
        return target.name

    # ---------------------------------------------------------------- WebSocket

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self._sockets.pop(sid, None)  # a 2nd socket silently detaches the 1st one
        else:
            sid = uuid.uuid4().hex
        self._sockets[sid] = ws
        self._socket_flags[sid] = {}
        self._ws_requests[id(request)] = request
        try:
            await self._send_now(ws, "status", {"status": self._queue_info(), "sid": sid})
            if self._client_id == sid and self._last_node_id is not None:
                await self._send_now(ws, "executing", {"node": self._last_node_id})
            await self._read_client_frames(ws, sid)
        finally:
            # ComfyUI drops the entry by sid: closing a detached old socket also unregisters the new one.
            self._sockets.pop(sid, None)
            self._socket_flags.pop(sid, None)
            self._ws_requests.pop(id(request), None)
        return ws

    async def _read_client_frames(self, ws: web.WebSocketResponse, sid: str) -> None:
        """Only a `feature_flags` first frame means anything to the server; the rest is ignored."""
        first = True
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except json.JSONDecodeError:
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                self._socket_flags[sid] = data.get("data", {})
                await self._send_now(ws, "feature_flags", SERVER_FEATURES)
            first = False

    @staticmethod
    async def _send_now(ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"type": event, "data": data}))

    def _send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """Queue a JSON message (serialised now: snapshots mutate later); `sid` None = everyone."""
        self._outbox.put_nowait((sid, json.dumps({"type": event, "data": data})))

    def _send_binary(self, payload: bytes, sid: str | None) -> None:
        self._outbox.put_nowait((sid, payload))

    def _broadcast_status(self) -> None:
        self._send("status", {"status": self._queue_info()}, None)

    async def _publish_loop(self) -> None:
        while True:
            sid, payload = await self._outbox.get()
            await self._not_hung.wait()
            targets = (
                list(self._sockets.values()) if sid is None else [self._sockets[sid]] if sid in self._sockets else []
            )
            for ws in targets:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    if isinstance(payload, bytes):
                        await ws.send_bytes(payload)
                    else:
                        await ws.send_str(payload)

    def _supports_preview_metadata(self, sid: str | None) -> bool:
        return sid is not None and self._socket_flags.get(sid, {}).get("supports_preview_metadata") is True

    # ---------------------------------------------------------------- worker

    async def _worker_loop(self) -> None:
        while True:
            while not self._heap or not self._not_hung.is_set():
                self._wakeup.clear()
                await self._wakeup.wait()
            item = heapq.heappop(self._heap)[3]
            self._running = item
            self.executed_prompt_ids.append(item.prompt_id)
            self._broadcast_status()  # the running prompt still counts in queue_remaining
            began = time.perf_counter()
            try:
                await self._run_job(item)
            except Exception:  # a bug of the double must not stop the queue for the rest of a test run
                self._log.exception("ComfyUIDouble failed while running %s", item.prompt_id)
                self._running = None
            self.job_spans.append((began, time.perf_counter()))

    def _job_seconds(self, item: _QueueItem) -> float:
        seconds = item.extra_data.get("double_work_seconds", self.work_seconds)
        return float(seconds) / self.speed

    async def _run_job(self, item: _QueueItem) -> None:
        job = _Job(item, _ProgressRegistry(item.prompt_id))
        self._interrupt_requested = False  # an interrupt that arrived while idle is dropped here
        self._client_id = item.client_id
        self._job_message(job, "execution_start", {"prompt_id": item.prompt_id})
        signatures = self._signatures(item.prompt)
        used = set(signatures.values())
        self._cache = {key: entry for key, entry in self._cache.items() if key in used}
        cached = [node_id for node_id in item.prompt if signatures[node_id] in self._cache]
        self._job_message(job, "execution_cached", {"nodes": cached, "prompt_id": item.prompt_id})
        success = False
        try:
            await self._execute_plan(job, signatures)
            success = True
        except _InterruptError as stop:
            self._report_interrupt(job, stop.node_id)
        except _NodeExecutionError as failure:
            self._report_failure(job, failure)
        except _CycleError as cycle:
            failure = _NodeExecutionError(cycle.node_id, "graph.DependencyCycleError", "Dependency cycle detected", [])
            self._report_failure(job, failure)
        if success:
            self._job_message(job, "execution_success", {"prompt_id": item.prompt_id})
        self._finish_job(job, success)

    def _job_message(self, job: _Job, event: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        """execution.py's add_message: kept for history, sent to the prompt's client (or all if broadcast)."""
        data = {**data, "timestamp": _now_ms()}
        job.messages.append([event, data])
        if job.item.client_id is not None or broadcast:
            self._send(event, data, job.item.client_id)

    def _report_interrupt(self, job: _Job, node_id: str) -> None:
        data = {
            "prompt_id": job.item.prompt_id,
            "node_id": node_id,
            "node_type": job.item.prompt[node_id]["class_type"],
            "executed": list(job.executed),
        }
        self._job_message(job, "execution_interrupted", data, broadcast=True)

    def _report_failure(self, job: _Job, failure: _NodeExecutionError) -> None:
        data = {
            "prompt_id": job.item.prompt_id,
            "node_id": failure.node_id,
            "node_type": job.item.prompt[failure.node_id]["class_type"],
            "executed": list(job.executed),
            "exception_message": f"{failure.message}\n",
            "exception_type": failure.exception_type,
            "traceback": failure.traceback,
            "current_inputs": failure.current_inputs,
            "current_outputs": list(job.item.prompt),
        }
        self._job_message(job, "execution_error", data)

    def _finish_job(self, job: _Job, success: bool) -> None:
        """task_done: history first, then `status`, then the `executing {node: null}` end signal."""
        self._last_node_id = None
        if len(self.history) >= MAX_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        meta = {
            node_id: {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            for node_id in job.ui_outputs
        }
        status = {
            "status_str": "success" if success else "error",
            "completed": success,
            "messages": job.messages,
        }
        self.history[job.item.prompt_id] = {
            "prompt": job.item.as_list(),
            "outputs": job.ui_outputs,
            "status": status,
            "meta": meta,
        }
        self._running = None
        self._broadcast_status()
        if job.item.client_id is not None:
            self._send("executing", {"node": None, "prompt_id": job.item.prompt_id}, job.item.client_id)

    # ---------------------------------------------------------------- cache

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """A content signature per node (class, inputs, ancestors' signatures), like ComfyUI's cache keys."""
        memo: dict[str, str] = {}
        for node_id in prompt:
            self._signature(prompt, node_id, memo, set())
        return memo

    def _signature(self, prompt: dict[str, Any], node_id: str, memo: dict[str, str], visiting: set[str]) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt.get(node_id)
        if not isinstance(node, dict) or node_id in visiting:
            return f"unresolved:{node_id}"
        visiting.add(node_id)
        class_type = node.get("class_type")
        parts: list[Any] = [class_type, self._is_changed(node)]
        if "UNIQUE_ID" in self._object_info.get(class_type, {}).get("input", {}).get("hidden", {}).values():
            parts.append(node_id)
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        for key in sorted(inputs):
            value = inputs[key]
            if _is_link(value):
                parts.append([key, "LINK", self._signature(prompt, value[0], memo, visiting), value[1]])
            else:
                parts.append([key, value])
        visiting.discard(node_id)
        memo[node_id] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        return memo[node_id]

    def _is_changed(self, node: dict[str, Any]) -> str:
        """IS_CHANGED: LoadImage hashes its file; SaveImageWebsocket returns the time (never cached)."""
        class_type = node.get("class_type")
        if class_type in NEVER_CACHED_CLASSES:
            return f"{time.time_ns()}-{uuid.uuid4()}"
        if class_type in IMAGE_INPUT_CLASSES:
            path = self._annotated_path(str(node.get("inputs", {}).get("image")))
            return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        return ""

    # ---------------------------------------------------------------- node execution

    async def _execute_plan(self, job: _Job, signatures: dict[str, str]) -> None:
        prompt = job.item.prompt
        plan = _ExecutionList(
            prompt,
            is_cached=lambda node_id: signatures[node_id] in self._cache,
            is_output=lambda node_id: self._is_output_class(prompt[node_id]["class_type"]),
        )
        for output_id in job.item.outputs:
            plan.add_node(output_id)
        to_run = [node_id for node_id in plan.pending if signatures[node_id] not in self._cache]
        job.work_per_node = self._job_seconds(job.item) / max(1, len(to_run))
        while (node_id := plan.next_node()) is not None:
            entry = self._cache.get(signatures[node_id])
            if entry is not None:
                self._replay_cached(job, node_id, entry)
            else:
                await self._run_node(job, node_id, signatures[node_id])
            plan.complete(node_id)

    def _send_progress_state(self, job: _Job) -> None:
        self._send("progress_state", job.progress.snapshot(), job.item.client_id)

    def _send_executed(self, job: _Job, node_id: str, output: dict[str, Any] | None) -> None:
        if job.item.client_id is not None:
            data = {
                "node": node_id,
                "display_node": node_id,
                "output": output,
                "prompt_id": job.item.prompt_id,
            }
            self._send("executed", data, job.item.client_id)

    def _replay_cached(self, job: _Job, node_id: str, entry: _CacheEntry) -> None:
        """A cached output node: no `executing`, just `executed` with the previous output."""
        self._send_executed(job, node_id, entry.ui)
        job.progress.finish(node_id)
        self._send_progress_state(job)
        if entry.ui is not None:
            job.ui_outputs[node_id] = entry.ui

    async def _run_node(self, job: _Job, node_id: str, signature: str) -> None:
        job.progress.start(node_id)
        self._send_progress_state(job)
        if job.item.client_id is not None:
            self._last_node_id = node_id
            data = {"node": node_id, "display_node": node_id, "prompt_id": job.item.prompt_id}
            self._send("executing", data, job.item.client_id)
        try:
            self._raise_if_interrupted(node_id)
            self._raise_injected_failure(job, node_id)
            ui = await self._simulate_node(job, node_id)
        except _NodeExecutionError as failure:
            failure.current_inputs = self._current_inputs(job, node_id)
            raise
        except (_InterruptError, asyncio.CancelledError):
            raise
        except Exception as exc:  # any other error of a node is an execution_error, not a crash
            failure = _NodeExecutionError(
                node_id, _full_type_name(type(exc)), str(exc), traceback.format_tb(exc.__traceback__)
            )
            failure.current_inputs = self._current_inputs(job, node_id)
            raise failure from exc
        self._cache[signature] = _CacheEntry(ui, loader=job.item.prompt[node_id]["class_type"] in LOADER_CLASSES)
        job.executed.append(node_id)
        if ui is not None:
            job.ui_outputs[node_id] = ui
            self._send_executed(job, node_id, ui)
        job.progress.finish(node_id)
        self._send_progress_state(job)

    def _raise_if_interrupted(self, node_id: str) -> None:
        if self._interrupt_requested:
            self._interrupt_requested = False
            raise _InterruptError(node_id)

    def _raise_injected_failure(self, job: _Job, node_id: str) -> None:
        failure = self._next_failure
        if failure is None or failure.node not in (None, node_id, job.item.prompt[node_id]["class_type"]):
            return
        self._next_failure = None
        tb = [
            f'  File "{__file__}", line 1, in fail_next_job\n    raise {failure.exception_type}({failure.message!r})\n'
        ]
        raise _NodeExecutionError(node_id, failure.exception_type, failure.message, tb)

    def _current_inputs(self, job: _Job, node_id: str) -> dict[str, list[Any]]:
        prompt = job.item.prompt
        node = prompt[node_id]
        out = {name: [_format_input_value(self._resolve(prompt, value))] for name, value in node["inputs"].items()}
        hidden = self._object_info.get(node["class_type"], {}).get("input", {}).get("hidden", {})
        values = {
            "PROMPT": str(prompt),
            "EXTRA_PNGINFO": job.item.extra_data.get("extra_pnginfo"),
            "UNIQUE_ID": node_id,
        }
        out.update({name: [_format_input_value(values.get(kind))] for name, kind in hidden.items()})
        return out

    async def _work(self, seconds: float) -> None:
        """Sleep `seconds` of simulated compute, frozen while the double hangs."""
        remaining = seconds
        while True:
            await self._not_hung.wait()
            if remaining <= 0:
                return
            step = min(remaining, 0.05)
            await asyncio.sleep(step)
            remaining -= step

    async def _simulate_node(self, job: _Job, node_id: str) -> dict[str, Any] | None:
        node = job.item.prompt[node_id]
        class_type = node["class_type"]
        if class_type in IMAGE_INPUT_CLASSES:
            self._check_loadable(node_id, node)
        if class_type == "SaveImageWebsocket":
            await self._stream_ws_images(job, node_id)
            return None
        if class_type in LOADER_CLASSES:
            await self._load_models(job, node)
        steps = self._resolve(job.item.prompt, node["inputs"].get("steps"))
        if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
            await self._work_with_progress(job, node_id, steps)
        else:
            await self._work(job.work_per_node)
        return await self._node_ui(job, node_id)

    async def _load_models(self, job: _Job, node: dict[str, Any]) -> None:
        """A loader node that runs loads its model files: `model_switch_seconds` (not scaled by `speed`)."""
        names = tuple(
            str(self._resolve(job.item.prompt, node["inputs"].get(input_name)))
            for (class_type, input_name) in MODEL_INPUT_FOLDERS
            if class_type == node["class_type"] and input_name in node["inputs"]
        )
        if isinstance(self.model_switch_seconds, dict):
            seconds = sum(self.model_switch_seconds.get(name, 0.0) for name in names)
        else:
            seconds = self.model_switch_seconds if names else 0.0
        if seconds > 0:
            await self._work(seconds)
        self.model_loads.append((names, seconds))

    def _check_loadable(self, node_id: str, node: dict[str, Any]) -> None:
        path = self._annotated_path(str(node["inputs"].get("image")))
        if not looks_like_image(path.read_bytes()):  # FileNotFoundError if it vanished since validation
            raise _NodeExecutionError(node_id, "PIL.UnidentifiedImageError", f"cannot identify image file '{path}'", [])

    async def _work_with_progress(self, job: _Job, node_id: str, steps: int) -> None:
        """A sampler-like node: `progress` 1..steps spread over its share of the job time, each with a preview
        frame when `sampler_previews` is on (latent_preview's hook; PNG is one of its two formats)."""
        preview = await asyncio.to_thread(encode_solid_png, 8, 8, (90, 90, 90)) if self.sampler_previews else None
        for value in range(1, steps + 1):
            await self._work(job.work_per_node / steps)
            self._progress(job, node_id, value, steps, preview)

    async def _stream_ws_images(self, job: _Job, node_id: str) -> None:
        """SaveImageWebsocket: one progress step (0..n-1) and one binary PNG frame per image."""
        spec = self._image_spec(job, node_id)
        image = await asyncio.to_thread(encode_solid_png, spec.width, spec.height, spec.color)
        for index in range(spec.batch):
            await self._work(job.work_per_node / spec.batch)
            self._progress(job, node_id, index, spec.batch, image)
            self.websocket_images.append(image)

    def _progress(self, job: _Job, node_id: str, value: int, total: int, image: bytes | None = None) -> None:
        """The ProgressBar hook: interrupt check, progress_state, then `progress` and its preview frame."""
        self._raise_if_interrupted(node_id)
        client_id = job.item.client_id
        job.progress.update(node_id, value, total)
        self._send_progress_state(job)
        with_metadata = image is not None and self._supports_preview_metadata(client_id)
        if with_metadata and image is not None:  # type 4 comes before its `progress` message
            self._send_binary(self._metadata_frame(job, node_id, image), client_id)
        data = {"value": value, "max": total, "prompt_id": job.item.prompt_id, "node": node_id}
        self._send("progress", data, client_id)
        if image is not None and not with_metadata:  # legacy type 1 comes after it
            self._send_binary(struct.pack(">II", BINARY_PREVIEW_IMAGE, PNG_FORMAT_CODE) + image, client_id)

    @staticmethod
    def _metadata_frame(job: _Job, node_id: str, image: bytes) -> bytes:
        metadata = {
            "node_id": node_id,
            "prompt_id": job.item.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
            "image_type": "image/png",
        }
        encoded = json.dumps(metadata).encode("utf-8")
        return struct.pack(">II", BINARY_PREVIEW_WITH_METADATA, len(encoded)) + encoded + image

    # ---------------------------------------------------------------- outputs

    async def _node_ui(self, job: _Job, node_id: str) -> dict[str, Any] | None:
        node = job.item.prompt[node_id]
        class_type = node["class_type"]
        if class_type == "SaveImage":
            prefix = self._resolve(job.item.prompt, node["inputs"].get("filename_prefix", "ComfyUI"))
            return await self._save_images(job, node_id, str(prefix), "output")
        if class_type == "PreviewImage":
            suffix = self._preview_suffixes.setdefault(
                node_id, "".join(random.choice(PREVIEW_SUFFIX_ALPHABET) for _ in range(5))
            )
            return await self._save_images(job, node_id, f"ComfyUI_temp_{suffix}", "temp")
        if class_type == "PreviewAny":
            return {"text": [self._preview_text(self._resolve(job.item.prompt, node["inputs"].get("source")))]}
        return None

    async def _save_images(self, job: _Job, node_id: str, prefix: str, kind: str) -> dict[str, Any]:
        """SaveImage/PreviewImage: `<prefix>_<counter:05>_.png` files carrying the prompt as tEXt chunks."""
        spec = self._image_spec(job, node_id)
        folder, filename, counter, subfolder = _save_image_path(prefix, self._dirs[kind], spec.width, spec.height)
        text = {"prompt": json.dumps(job.item.prompt)}
        text.update({key: json.dumps(value) for key, value in job.item.extra_data.get("extra_pnginfo", {}).items()})
        data = await asyncio.to_thread(self.png_maker, spec.width, spec.height, spec.color, text)
        images = []
        for batch_number in range(spec.batch):
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            await asyncio.to_thread(Path(folder, name).write_bytes, data)
            images.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        return {"images": images}

    @staticmethod
    def _preview_text(source: Any) -> str:
        """PreviewAny.main: strings as is, numbers via str, the rest as JSON."""
        if source is None:
            return "None"
        if isinstance(source, str):
            return source
        if isinstance(source, int | float | bool):
            return str(source)
        if isinstance(source, _Opaque):
            return str(source)
        try:
            return json.dumps(source)
        except (TypeError, ValueError):
            return str(source)

    def _resolve(self, prompt: dict[str, Any], value: Any, depth: int = 0) -> Any:
        """A literal, or the value a Primitive* node forwards; other node outputs are opaque."""
        if isinstance(value, dict) and "__value__" in value:
            return value["__value__"]
        if not _is_link(value):
            return value
        source = prompt.get(value[0])
        if isinstance(source, dict) and source.get("class_type") in PRIMITIVE_CLASSES and depth < 32:
            return self._resolve(prompt, source.get("inputs", {}).get("value"), depth + 1)
        return _Opaque(f"<output {value[1]} of node {value[0]}>")

    def _image_spec(self, job: _Job, node_id: str) -> _ImageSpec:
        """Size, batch and colour of a node's images, read from the nearest upstream nodes that set them."""
        width = height = batch = color = None
        current: str | None = node_id
        seen: set[str] = set()
        while current is not None and current in job.item.prompt and current not in seen:
            seen.add(current)
            node = job.item.prompt[current]
            inputs = node.get("inputs", {})
            if width is None:
                width, height = self._node_size(node)
            if batch is None and isinstance(inputs.get("batch_size"), int):
                batch = max(1, inputs["batch_size"])
            if color is None and node.get("class_type") == "EmptyImage" and isinstance(inputs.get("color"), int):
                color = (
                    (inputs["color"] >> 16) & 0xFF,
                    (inputs["color"] >> 8) & 0xFF,
                    inputs["color"] & 0xFF,
                )
            current = self._image_source(inputs)
        if color is None:
            digest = hashlib.sha256(json.dumps(job.item.prompt, sort_keys=True, default=str).encode()).digest()
            color = (digest[0], digest[1], digest[2])
        return _ImageSpec(width or 64, height or 64, batch or 1, color)

    def _node_size(self, node: dict[str, Any]) -> tuple[int | None, int | None]:
        inputs = node.get("inputs", {})
        width, height = inputs.get("width"), inputs.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return width, height
        if node.get("class_type") in IMAGE_INPUT_CLASSES:
            path = self._annotated_path(str(inputs.get("image")))
            size = png_size(path.read_bytes()) if path.is_file() else None
            if size is not None:
                return size
        return None, None

    @staticmethod
    def _image_source(inputs: dict[str, Any]) -> str | None:
        """The upstream node an image flows from: an image-like input first, else the first link."""
        links = [(name, value) for name, value in inputs.items() if _is_link(value)]
        for name, value in links:
            if name in IMAGE_LINK_NAMES:
                return value[0]
        return links[0][1][0] if links else None


# --------------------------------------------------------------------------- standalone process


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ComfyUI 0.3.64 test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--work-seconds", type=float, default=0.05)
    parser.add_argument("--model-switch-seconds", type=float, default=0.0, help="time a loader node takes to load")
    parser.add_argument("--device-name", default="cpu")
    parser.add_argument("--vram-total", type=int, default=DEFAULT_VRAM_TOTAL)
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--name", default="comfy")
    parser.add_argument("--models", type=json.loads, default=None, help='JSON, e.g. {"checkpoints": ["a.safetensors"]}')
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    double = ComfyUIDouble(
        speed=args.speed,
        work_seconds=args.work_seconds,
        model_switch_seconds=args.model_switch_seconds,
        models=args.models,
        device_name=args.device_name,
        vram_total=args.vram_total,
        output_dir=args.output_dir,
        name=args.name,
        host=args.host,
    )
    await serve_until_signalled(double, args.port, f"ComfyUIDouble {args.name}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
