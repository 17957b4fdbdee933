"""registry-service: render types (kinds of generation) bound to ComfyUI API-format workflows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from contracts.messages.base import Record, Request

RenderTypeName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="Render type name: lowercase letters, digits, '-', '_' or '.', e.g. 'sdxl'.",
    ),
]

# A ComfyUI workflow in API format: {node_id: {"class_type": str, "inputs": {...}}}.
ApiWorkflow = dict[str, dict[str, Any]]

# The request parameters a workflow may take. Each maps to zero or more (node, input) slots.
ParameterName = Literal[
    "prompt",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "steps",
    "cfg",
    "batch_size",
    "denoise",
    "input_image",
]


class Slot(Record):
    node_id: str
    input_name: str


class ParameterMap(Record):
    slots: dict[ParameterName, list[Slot]] = {}


class RenderDefaults(Record):
    width: int = 1024
    height: int = 1024
    steps: int = 25
    cfg: float = 7.0
    batch_size: int = 1
    denoise: float = 1.0


class ModelRef(Record):
    folder: str  # ComfyUI model folder, e.g. "checkpoints", "loras", "upscale_models"
    name: str


class Requirements(Record):
    node_classes: list[str] = []
    models: list[ModelRef] = []


OutputKind = Literal["image", "video", "audio", "other"]


class RenderType(Record):
    name: RenderTypeName
    description: str = ""
    workflow: ApiWorkflow = {}
    parameter_map: ParameterMap = msgspec.field(default_factory=ParameterMap)
    defaults: RenderDefaults = msgspec.field(default_factory=RenderDefaults)
    requirements: Requirements = msgspec.field(default_factory=Requirements)
    output_kind: OutputKind = "image"
    enabled: bool = True
    is_default: bool = False
    version: int = 0  # incremented on every saved edit; a save with a stale version is a conflict


class RenderTypeSummary(Record):
    name: str
    description: str
    output_kind: OutputKind
    enabled: bool
    is_default: bool
    version: int
    parameters: list[ParameterName]  # what a request may set for this render type
    defaults: RenderDefaults
    requirements: Requirements


class RenderTypeList(Record):
    render_types: list[RenderTypeSummary]


class ListRenderTypes(Request):
    include_disabled: bool = True


class GetRenderType(Request):
    name: RenderTypeName


class SaveRenderType(Request):
    render_type: RenderType
    original_name: str | None = None
    changed_by: str = "admin"


class DeleteRenderType(Request):
    name: RenderTypeName


class SetDefaultRenderType(Request):
    name: RenderTypeName


class RenderTypeVersion(Record):
    version: int
    changed_by: str
    changed_at: float
    note: str = ""


class GetRenderTypeHistory(Request):
    name: RenderTypeName


class RenderTypeHistory(Record):
    name: str
    versions: list[RenderTypeVersion]


class RollbackRenderType(Request):
    name: RenderTypeName
    version: int
    changed_by: str = "admin"


class AnalyzeWorkflow(Request):
    workflow_json: Annotated[str, msgspec.Meta(max_length=20_000_000)]


class WorkflowAnalysis(Record):
    workflow: ApiWorkflow
    proposed_map: ParameterMap
    proposed_defaults: RenderDefaults
    requirements: Requirements
    output_kind: OutputKind
    warnings: list[str] = []


class GenerationParams(Record):
    """The request values a render type injects into its workflow. None: the render type's default."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    batch_size: int | None = None
    denoise: float | None = None
    input_image: str | None = None  # the file name the image has on the ComfyUI instance (after upload)


class ResolveRenderType(Request):
    render_type: str | None = None  # None: the default render type
    params: GenerationParams = msgspec.field(default_factory=GenerationParams)


class ResolvedWorkflow(Record):
    render_type: str
    version: int
    workflow: ApiWorkflow
    params: GenerationParams  # the values used, the drawn seed included, so a result can be reproduced
    requirements: Requirements
    output_kind: OutputKind
