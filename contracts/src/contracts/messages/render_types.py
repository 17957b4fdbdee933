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
# A workflow as an admin sends it: any JSON object, so the registry (not the decoder) can say what is wrong
# with it, e.g. that it is ComfyUI's UI format and how to export the API format instead.
WorkflowJson = dict[str, Any]

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
    """The values a request that leaves a parameter out gets."""

    width: int = 1024
    height: int = 1024
    steps: int = 25
    cfg: float = 7.0
    batch_size: int = 1
    denoise: float = 1.0
    negative_prompt: str = ""  # used when a request brings no negative prompt of its own


class RenderLimits(Record):
    """What a request may ask of this render type (the registry also enforces ComfyUI's own limits)."""

    min_size: int = 64  # width and height, in pixels
    max_size: int = 8192
    size_multiple: int = 8  # width and height must be multiples of this (8, 16, 32 or 64)
    max_steps: int = 200
    max_batch_size: int = 16


class ModelRef(Record):
    folder: str  # ComfyUI model folder as `GET /models` names it, e.g. "checkpoints", "loras", "upscale_models"
    name: str
    # The loader that names the file, so a caller can also check the loader's choices in `/object_info`.
    node_class: str = ""
    input_name: str = ""


class Requirements(Record):
    node_classes: list[str] = []
    models: list[ModelRef] = []


OutputKind = Literal["image", "video", "audio", "other"]


class RenderType(Record):
    name: RenderTypeName
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    workflow: WorkflowJson = {}  # API format; the registry rejects anything else with a message saying why
    parameter_map: ParameterMap = msgspec.field(default_factory=ParameterMap)
    defaults: RenderDefaults = msgspec.field(default_factory=RenderDefaults)
    limits: RenderLimits = msgspec.field(default_factory=RenderLimits)
    requirements: Requirements = msgspec.field(default_factory=Requirements)  # derived from the workflow on save
    output_kind: OutputKind = "image"
    enabled: bool = True
    is_default: bool = False
    version: int = 0  # incremented on every saved edit; a save with a stale version is a conflict; 0: create
    updated_at: float | None = None  # set by the registry
    updated_by: str = ""


class ParameterSpec(Record):
    """One parameter a render type accepts, described for a caller (an LLM choosing arguments, a form)."""

    name: ParameterName
    type: Literal["string", "integer", "number", "image"]
    description: str
    required: bool = False
    default: int | float | str | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    multiple_of: int | None = None


class RenderTypeSummary(Record):
    name: str
    description: str
    output_kind: OutputKind
    enabled: bool
    is_default: bool
    version: int
    parameters: list[ParameterName]  # what a request may set for this render type
    requirements: Requirements
    # The defaults of those parameters only: an upscale has no steps or cfg, a flux workflow no cfg and, like any
    # workflow without a negative prompt (or with an empty one), no negative_prompt.
    defaults: dict[ParameterName, int | float | str] = {}
    parameter_specs: list[ParameterSpec] = []  # the same parameters with their types, defaults and limits


class RenderTypeList(Record):
    render_types: list[RenderTypeSummary]


class ListRenderTypes(Request):
    include_disabled: bool = True


class GetRenderType(Request):
    name: RenderTypeName


class SaveRenderType(Request):
    render_type: RenderType
    original_name: str | None = None  # the name it had, when the save renames it
    changed_by: str = "admin"
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""  # what changed, shown in the history


class DeleteRenderType(Request):
    name: RenderTypeName
    expected_version: int | None = None  # when set, a render type edited meanwhile is not deleted (conflict)


class DeletedRenderType(Record):
    name: str
    versions_removed: int  # history rows deleted with it


class SetDefaultRenderType(Request):
    name: RenderTypeName


class RenderTypeVersion(Record):
    version: int
    changed_by: str
    changed_at: float
    note: str = ""
    snapshot: RenderType | None = None  # the render type as saved in this version (on request)


class GetRenderTypeHistory(Request):
    name: RenderTypeName
    include_snapshots: bool = False


class RenderTypeHistory(Record):
    name: str
    versions: list[RenderTypeVersion]


class RollbackRenderType(Request):
    """Restore the workflow, map, defaults, limits, description and output kind of `version` as a new version."""

    name: RenderTypeName
    version: int
    changed_by: str = "admin"
    expected_version: int | None = None  # when set, a render type edited meanwhile is not rolled back (conflict)


class AnalyzeWorkflow(Request):
    workflow_json: Annotated[str, msgspec.Meta(max_length=20_000_000)]
    # An admin's corrected map to check against the workflow (nothing is saved); None: only propose one.
    parameter_map: ParameterMap | None = None


class WorkflowAnalysis(Record):
    workflow: ApiWorkflow
    proposed_map: ParameterMap
    proposed_defaults: RenderDefaults
    requirements: Requirements
    output_kind: OutputKind
    warnings: list[str] = []
    # One line per detected slot, e.g. "prompt: node 6 (CLIPTextEncode) input `text`", for the admin to check.
    explanations: list[str] = []
    # Text inputs that could take the prompt when no text encoder gave the workflow a prompt slot (e.g. a
    # PrimitiveString feeding a custom node); the admin maps `prompt` to one of them, or leaves it prompt-less.
    prompt_candidates: list[Slot] = []
    notes: list[str] = []  # what the admin should know that is not a problem (e.g. "takes no prompt")


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
    # Parameters the request set that this render type does not take (they had no effect).
    ignored: list[ParameterName] = []
    # Where each parameter went, e.g. to put the input image's final file name in after an upload.
    parameter_map: ParameterMap = msgspec.field(default_factory=ParameterMap)
