"""Workflow import over real NATS: rejections that say how to fix the file, slot detection, requirements, and
round trips checked against real ComfyUI 0.3.64: its recorded `/prompt` requests and its `/object_info`."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness import service_running
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import ErrorCode, ErrorInfo, HubError
from contracts.messages.render_types import (
    AnalyzeWorkflow,
    GenerationParams,
    GetRenderType,
    ListRenderTypes,
    ParameterMap,
    RenderType,
    ResolvedWorkflow,
    ResolveRenderType,
    SaveRenderType,
    Slot,
    WorkflowAnalysis,
)
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer

SEED_DIR = Path(__file__).resolve().parents[2] / "registry-service/src/registry_service/seed"


@pytest.fixture(scope="module")
async def registry(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsClient]:
    async with service_running("registry", nats_server.url, tmp_path_factory.mktemp("registry-workflows")) as nc:
        yield nc


@pytest.fixture(scope="module")
def object_info(protocol_dir: Path) -> dict[str, Any]:
    return json.loads((protocol_dir / "object_info-full.json").read_text())


def recorded_prompt(protocol_dir: Path, name: str) -> dict[str, Any]:
    """The workflow a real client posted to ComfyUI (and ComfyUI accepted) in a recorded exchange."""
    exchange = json.loads((protocol_dir / f"http-post-prompt-{name}.json").read_text())
    return exchange["request"]["body"]["prompt"]


async def analyze(
    nc: NatsClient, text: str | dict[str, Any], parameter_map: ParameterMap | None = None
) -> WorkflowAnalysis:
    body = text if isinstance(text, str) else json.dumps(text)
    return await call(nc, endpoints.Registry.ANALYZE, AnalyzeWorkflow(workflow_json=body, parameter_map=parameter_map))


async def analyze_refused(nc: NatsClient, text: str, parameter_map: ParameterMap | None = None) -> ErrorInfo:
    with pytest.raises(HubError) as raised:
        await analyze(nc, text, parameter_map)
    return raised.value.info


async def resolve(nc: NatsClient, render_type: str, **params: Any) -> ResolvedWorkflow:
    return await call(
        nc, endpoints.Registry.RESOLVE, ResolveRenderType(render_type=render_type, params=GenerationParams(**params))
    )


def slots_of(analysis: WorkflowAnalysis) -> dict[str, list[tuple[str, str]]]:
    return {name: [(s.node_id, s.input_name) for s in slots] for name, slots in analysis.proposed_map.slots.items()}


def exactly(value: Any) -> str:
    """JSON with the types kept apart (512 vs 512.0, "1" vs 1), for comparing what goes on the wire."""
    return json.dumps(value, sort_keys=True)


# -- what ComfyUI accepts, per its recorded /object_info -------------------------------------------------


def comfy_errors(workflow: dict[str, Any], object_info: dict[str, Any], file_inputs: set[tuple[str, str]]) -> list[str]:
    """What ComfyUI's prompt validation would object to, read from its `/object_info`.

    `file_inputs` are (class, input) pairs whose choices are files on the instance (models, input images): the
    recorded server had none, so their values are not looked up in its (empty) lists.
    """
    errors: list[str] = []
    for node_id, node in workflow.items():
        info = object_info.get(node["class_type"])
        if info is None:
            errors.append(f"{node_id}: unknown node class {node['class_type']}")
            continue
        required = info["input"].get("required", {})
        spec = {**required, **info["input"].get("optional", {})}
        errors += [f"{node_id}: required input {name} is missing" for name in required if name not in node["inputs"]]
        for name, value in node["inputs"].items():
            where = f"{node_id}.{name}"
            if name not in spec:
                errors.append(f"{where}: {node['class_type']} has no input {name}")
                continue
            kind, options = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {})
            if isinstance(value, list):
                outputs = object_info.get(workflow[value[0]]["class_type"], {}).get("output", [])
                if value[1] >= len(outputs):
                    errors.append(f"{where}: output {value[1]} of node {value[0]} does not exist")
                elif kind != "*" and outputs[value[1]] not in str(kind).split(","):
                    errors.append(f"{where}: gets {outputs[value[1]]}, needs {kind}")
            elif isinstance(kind, list) or kind == "COMBO":
                choices = kind if isinstance(kind, list) else options.get("options", [])
                if (node["class_type"], name) not in file_inputs and value not in choices:
                    errors.append(f"{where}: {value!r} is not one of {choices}")
            elif kind in ("INT", "FLOAT"):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or (kind == "INT" and isinstance(value, float))
                ):
                    errors.append(f"{where}: {value!r} is not a {kind}")
                elif not options.get("min", value) <= value <= options.get("max", value):
                    errors.append(f"{where}: {value} outside {options.get('min')}..{options.get('max')}")
            elif kind == "STRING" and not isinstance(value, str):
                errors.append(f"{where}: {value!r} is not a STRING")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                errors.append(f"{where}: {value!r} is not a BOOLEAN")
            elif kind not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                errors.append(f"{where}: a value given where ComfyUI needs a link of type {kind}")
    return errors


@pytest.mark.parametrize(
    ("recording", "accepted"),
    [
        ("success-trivial", True),
        ("success-basic", True),
        ("loadimage-uploaded", True),
        ("error-value-above-max", False),
        ("error-value-below-min", False),
        ("error-combo-value-not-in-list", False),
        ("error-missing-required-input", False),
        ("error-missing-required-link-input", False),
        ("error-return-type-mismatch", False),
        ("error-unknown-node-class", False),
        ("error-invalid-int-value", False),
    ],
)
def test_the_object_info_check_agrees_with_the_recorded_comfyui(
    protocol_dir: Path, object_info: dict[str, Any], recording: str, accepted: bool
) -> None:
    """The check used on the shipped workflows finds what real ComfyUI rejected, and nothing in what it ran."""
    errors = comfy_errors(recorded_prompt(protocol_dir, recording), object_info, {("LoadImage", "image")})
    assert (errors == []) is accepted, errors


# -- rejections ------------------------------------------------------------------------------------------


UI_EXPORT = {
    "id": "6f1f0c2e-0000-4000-8000-000000000000",
    "revision": 0,
    "last_node_id": 9,
    "last_link_id": 9,
    "nodes": [
        {
            "id": 3,
            "type": "KSampler",
            "pos": [863, 186],
            "size": [315, 262],
            "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7]}],
            "widgets_values": [156680208700286, "randomize", 20, 8, "euler", "normal", 1],
        },
        {
            "id": 9,
            "type": "SaveImage",
            "pos": [1451, 189],
            "inputs": [{"name": "images", "link": 9}],
            "widgets_values": ["ComfyUI"],
        },
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [9, 8, 0, 9, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
    "version": 0.4,
}


async def test_the_ui_workflow_format_is_rejected_with_how_to_export_the_api_format(registry: NatsClient) -> None:
    error = await analyze_refused(registry, json.dumps(UI_EXPORT))
    assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "workflow_json")
    for words in ("UI workflow format", '"nodes" and "links"', "API format", "dev mode", "Export (API)"):
        assert words in error.message
    assert error.details == {"format": "ui", "top_level_keys": sorted(UI_EXPORT)}
    # The same file sent straight to save is refused the same way.
    with pytest.raises(HubError) as raised:
        await call(
            registry,
            endpoints.Registry.SAVE,
            SaveRenderType(render_type=RenderType(name="ui-file", workflow=UI_EXPORT)),
        )
    assert raised.value.info.field == "render_type.workflow" and "Export (API)" in raised.value.info.message


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('{"1": {"class_type": "EmptyImage", "inputs": {"width": 64,}}}', "workflow_json", "line 1, column 59"),
        ("", "workflow_json", "the workflow is empty"),
        ("[1, 2]", "workflow_json", "not a JSON array"),
        ('{"1": {"class_type": "EmptyImage", "inputs": {"width": NaN}}}', "workflow_json", "NaN is not a JSON number"),
        ("{}", "workflow_json", "no nodes"),
        ('{"1": [1, 2]}', "workflow_json.1", "is a JSON array, not an object with"),
        (
            '{"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}',
            "workflow_json.1.inputs.images",
            "links to node 9, which is not in the workflow",
        ),
        (
            '{"1": {"class_type": "SaveImage", "inputs": {"images": ["1"]}}}',
            "workflow_json.1.inputs.images",
            "[source node id, output index]",
        ),
        (
            '{"1": {"class_type": "SaveImage", "inputs": {"images": ["1", -1]}}}',
            "workflow_json.1.inputs.images",
            "output indexes start at 0",
        ),
        ('{"1": {"class_type": "SaveImage"}}', "workflow_json.1.inputs", 'no "inputs" object'),
        ('{"1": {"class_type": "", "inputs": {}}}', "workflow_json.1.class_type", 'no "class_type"'),
        ('{"1": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}', "workflow_json", "cycle (1 → 1)"),
        ('{"1": {"class_type": "ImageBlur", "inputs": {"sigma": 1e400}}}', "workflow_json.1.inputs.sigma", "is inf"),
    ],
)
async def test_broken_workflows_are_rejected_saying_what_is_wrong(
    registry: NatsClient, text: str, field: str, words: str
) -> None:
    error = await analyze_refused(registry, text)
    assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, field)
    assert words in error.message


async def test_invalid_json_reports_where_it_breaks(registry: NatsClient) -> None:
    error = await analyze_refused(registry, '{\n  "1": {"class_type": "EmptyImage",\n  "inputs": {}\n}')
    assert error.details == {"line": 4, "column": 2} and "line 4, column 2" in error.message


async def test_a_corrected_map_is_checked_against_the_workflow(registry: NatsClient, protocol_dir: Path) -> None:
    workflow = json.dumps(recorded_prompt(protocol_dir, "success-basic"))
    wrong_node = ParameterMap(slots={"width": [Slot(node_id="42", input_name="width")]})
    error = await analyze_refused(registry, workflow, wrong_node)
    assert error.field == "parameter_map.slots.width[0]" and "node 42, which is not in the workflow" in error.message
    assert error.details is not None and error.details["nodes"]["4"] == "ImageScale"  # type: ignore[index]
    wrong_input = ParameterMap(slots={"height": [Slot(node_id="4", input_name="size")]})
    error = await analyze_refused(registry, workflow, wrong_input)
    assert "has no such input" in error.message and error.details == {
        "inputs": ["crop", "height", "image", "upscale_method", "width"]
    }
    linked = ParameterMap(slots={"prompt": [Slot(node_id="6", input_name="filename_prefix")]})
    error = await analyze_refused(registry, workflow, linked)
    assert "linked from node 5 (PrimitiveString)" in error.message
    # A map that fits is echoed back with its explanation and the defaults it implies.
    scaled = ParameterMap(
        slots={"width": [Slot(node_id="4", input_name="width")], "height": [Slot(node_id="4", input_name="height")]}
    )
    analysis = await analyze(registry, workflow, scaled)
    assert analysis.proposed_map == scaled
    assert (analysis.proposed_defaults.width, analysis.proposed_defaults.height) == (256, 256)
    assert analysis.explanations == [
        "width: node 4 (ImageScale) input `width`",
        "height: node 4 (ImageScale) input `height`",
    ]


# -- round trips with the recorded ComfyUI exchanges ---------------------------------------------------------


@pytest.mark.parametrize("recording", ["success-trivial", "success-basic"])
async def test_import_then_resolve_gives_exactly_the_request_comfyui_accepted(
    registry: NatsClient, protocol_dir: Path, object_info: dict[str, Any], recording: str
) -> None:
    recorded = recorded_prompt(protocol_dir, recording)
    analysis = await analyze(registry, json.dumps(recorded, indent=2))
    assert slots_of(analysis) == {
        "width": [("1", "width")],
        "height": [("1", "height")],
        "batch_size": [("1", "batch_size")],
    }  # the EmptyImage is the size source; ImageScale (basic) is a resize, not the size
    size = recorded["1"]["inputs"]["width"]
    assert (analysis.proposed_defaults.width, analysis.proposed_defaults.height) == (size, size)
    # basic's PreviewAny shows text only: the analysis says the hub keeps nothing of it.
    uncollectable = [f"node {n} (PreviewAny)" for n, node in recorded.items() if node["class_type"] == "PreviewAny"]
    assert analysis.output_kind == "image" and [w.split(" shows")[0] for w in analysis.warnings] == uncollectable
    assert analysis.requirements.node_classes == sorted({n["class_type"] for n in recorded.values()})

    name = f"recorded-{recording}"
    saved = await call(
        registry,
        endpoints.Registry.SAVE,
        SaveRenderType(
            render_type=RenderType(
                name=name,
                workflow=analysis.workflow,
                parameter_map=analysis.proposed_map,
                defaults=analysis.proposed_defaults,
                output_kind=analysis.output_kind,
            )
        ),
    )
    resolved = await resolve(registry, name, prompt="not used by this workflow")
    assert resolved.ignored == ["prompt"] and resolved.version == saved.version
    assert resolved.workflow.keys() == recorded.keys()
    for node_id, node in recorded.items():
        assert exactly(resolved.workflow[node_id]) == exactly(node), node_id
    assert comfy_errors(resolved.workflow, object_info, set()) == []

    # A request's size lands in the size slot and nowhere else.
    resized = await resolve(registry, name, width=128, height=96, batch_size=2)
    changed = {
        (node_id, key)
        for node_id, node in recorded.items()
        for key, value in node["inputs"].items()
        if exactly(resized.workflow[node_id]["inputs"][key]) != exactly(value)
    }
    assert changed == {("1", "width"), ("1", "height"), ("1", "batch_size")}
    assert resized.workflow["1"]["inputs"] | {"color": 0} == {"width": 128, "height": 96, "batch_size": 2, "color": 0}


async def test_a_load_image_workflow_takes_the_uploaded_file_name(registry: NatsClient, protocol_dir: Path) -> None:
    recorded = recorded_prompt(protocol_dir, "loadimage-uploaded")
    uploaded = recorded["1"]["inputs"]["image"]  # "proto_sub/tiny-021624.png", as ComfyUI's upload named it
    body = {"prompt": {**recorded, "1": {**recorded["1"], "inputs": {"image": "example.png"}}}, "client_id": "ui-1"}
    analysis = await analyze(registry, json.dumps(body))  # a whole POST /prompt body is accepted too
    assert slots_of(analysis) == {"input_image": [("1", "image")]}
    await call(
        registry,
        endpoints.Registry.SAVE,
        SaveRenderType(
            render_type=RenderType(
                name="recorded-load-image", workflow=analysis.workflow, parameter_map=analysis.proposed_map
            )
        ),
    )
    resolved = await resolve(registry, "recorded-load-image", input_image=uploaded)
    assert exactly(resolved.workflow) == exactly(recorded)


# -- detection ---------------------------------------------------------------------------------------------------


def sdxl_text(text: Any) -> dict[str, Any]:
    """A CLIPTextEncodeSDXL node of the base pass: 1024 x 1024, the same text (or link) for both encoders."""
    sizes = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": ["3", 1], **sizes, "text_g": text, "text_l": text}}


def refiner_text(ascore: float, text: str) -> dict[str, Any]:
    """A CLIPTextEncodeSDXLRefiner node of the refiner pass, 1024 x 1024."""
    inputs = {"clip": ["2", 1], "ascore": ascore, "width": 1024, "height": 1024, "text": text}
    return {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": inputs}


def advanced_sampler(
    model: str,
    add_noise: str,
    cfg: float,
    conditioning: tuple[list[Any], list[Any]],
    latent: str,
    steps: tuple[int, int],
) -> dict[str, Any]:
    """A KSamplerAdvanced pass (seed 7, 30 steps, euler/normal) over the steps `steps` (start, end); the leftover
    noise is returned when noise is added (the base pass) and not otherwise (the refiner)."""
    positive, negative = conditioning
    inputs = {
        "model": [model, 0],
        "add_noise": add_noise,
        "noise_seed": 7,
        "steps": 30,
        "cfg": cfg,
        "sampler_name": "euler",
        "scheduler": "normal",
        "positive": positive,
        "negative": negative,
        "latent_image": [latent, 0],
        "start_at_step": steps[0],
        "end_at_step": steps[1],
        "return_with_leftover_noise": add_noise,
    }
    return {"class_type": "KSamplerAdvanced", "inputs": inputs}


def sdxl_refiner_workflow() -> dict[str, Any]:
    """SDXL base + refiner with a LoRA, a ControlNet on the positive/negative pair, and the prompt in a primitive."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_refiner_1.0.safetensors"}},
        "3": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": "detail.safetensors",
                "strength_model": 0.8,
                "strength_clip": 0.8,
            },
        },
        "4": {"class_type": "PrimitiveString", "inputs": {"value": "a castle"}},
        "5": sdxl_text(["4", 0]),
        "6": sdxl_text("ugly"),
        "7": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny_sdxl.safetensors"}},
        "8": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "9": {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["5", 0],
                "negative": ["6", 0],
                "control_net": ["7", 0],
                "image": ["8", 0],
                "strength": 0.7,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        },
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "11": advanced_sampler("3", "enable", 7.5, (["9", 0], ["9", 1]), "10", (0, 24)),
        "12": refiner_text(6.0, "a castle"),
        "13": refiner_text(2.5, "ugly"),
        "14": advanced_sampler("2", "disable", 5.0, (["12", 0], ["13", 0]), "11", (24, 10000)),
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["2", 2]}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "castle"}},
    }


async def test_slots_are_found_through_primitives_pass_through_nodes_and_two_samplers(
    registry: NatsClient, object_info: dict[str, Any]
) -> None:
    workflow = sdxl_refiner_workflow()
    models = {
        ("CheckpointLoaderSimple", "ckpt_name"),
        ("LoraLoader", "lora_name"),
        ("ControlNetLoader", "control_net_name"),
        ("LoadImage", "image"),
    }
    assert comfy_errors(workflow, object_info, models) == []  # a workflow ComfyUI would run
    analysis = await analyze(registry, workflow)
    assert slots_of(analysis) == {
        "prompt": [("4", "value"), ("12", "text")],  # through ControlNetApplyAdvanced's first output to the primitive
        "negative_prompt": [("6", "text_g"), ("6", "text_l"), ("13", "text")],  # its second output: the negative
        "seed": [("11", "noise_seed"), ("14", "noise_seed")],
        "width": [("10", "width"), ("5", "width"), ("5", "target_width"), ("6", "width"), ("6", "target_width")],
        "height": [("10", "height"), ("5", "height"), ("5", "target_height"), ("6", "height"), ("6", "target_height")],
        "steps": [("11", "steps"), ("14", "steps")],  # the same in both passes
        "cfg": [("11", "cfg")],  # different per pass: the first pass only, with a warning
        "batch_size": [("10", "batch_size")],
        "input_image": [("8", "image")],
    }
    assert any("different cfg" in w for w in analysis.warnings)
    assert [(m.folder, m.name, m.node_class) for m in analysis.requirements.models] == [
        ("checkpoints", "sd_xl_base_1.0.safetensors", "CheckpointLoaderSimple"),
        ("checkpoints", "sd_xl_refiner_1.0.safetensors", "CheckpointLoaderSimple"),
        ("controlnet", "canny_sdxl.safetensors", "ControlNetLoader"),
        ("loras", "detail.safetensors", "LoraLoader"),
    ]
    assert analysis.proposed_defaults.negative_prompt == "ugly" and analysis.proposed_defaults.cfg == 7.5
    assert "prompt: node 4 (PrimitiveString) input `value`" in analysis.explanations


async def test_proposed_defaults_are_fitted_to_the_limits_with_a_warning(registry: NatsClient) -> None:
    workflow = json.loads((SEED_DIR / "sdxl.json").read_text())
    workflow["3"]["inputs"].update(steps=500, cfg=7)
    workflow["5"]["inputs"].update(width=1000, height=20000)
    analysis = await analyze(registry, workflow)
    defaults = analysis.proposed_defaults
    assert (defaults.width, defaults.height, defaults.steps, defaults.cfg) == (1000, 8192, 200, 7.0)
    assert any("height 20000" in w and "8192" in w for w in analysis.warnings)
    assert any("steps 500" in w and "200" in w for w in analysis.warnings)


async def test_custom_sampler_workflows_are_followed_through_noise_guider_and_sigmas(registry: NatsClient) -> None:
    analysis = await analyze(registry, (SEED_DIR / "flux.json").read_text())
    assert slots_of(analysis) == {
        "prompt": [("4", "text")],  # behind BasicGuider and FluxGuidance
        "seed": [("8", "noise_seed")],  # RandomNoise
        "width": [("6", "width"), ("7", "width")],  # the latent and ModelSamplingFlux
        "height": [("6", "height"), ("7", "height")],
        "steps": [("10", "steps")],  # BasicScheduler; no denoise for text to image
        "batch_size": [("6", "batch_size")],
    }
    assert [(m.folder, m.name) for m in analysis.requirements.models] == [
        ("diffusion_models", "flux1-dev.safetensors"),
        ("text_encoders", "clip_l.safetensors"),
        ("text_encoders", "t5xxl_fp16.safetensors"),
        ("vae", "ae.safetensors"),
    ]


async def test_sampler_custom_takes_its_steps_from_the_scheduler_and_prompts_from_sd3_encoders(
    registry: NatsClient, object_info: dict[str, Any]
) -> None:
    def encode(text: str) -> dict[str, Any]:
        inputs = {"clip": ["1", 1], "clip_l": text, "clip_g": text, "t5xxl": text, "empty_padding": "none"}
        return {"class_type": "CLIPTextEncodeSD3", "inputs": inputs}

    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
        "2": encode("a harbour at night"),
        "3": encode("blurry"),
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "5": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "6": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["1", 0], "scheduler": "sgm_uniform", "steps": 28, "denoise": 1.0},
        },
        "7": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["1", 0], "add_noise": True, "noise_seed": 3, "cfg": 4.5, "positive": ["2", 0],
                "negative": ["3", 0], "sampler": ["5", 0], "sigmas": ["6", 0], "latent_image": ["4", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd3"}},
    }  # fmt: skip
    assert comfy_errors(workflow, object_info, {("CheckpointLoaderSimple", "ckpt_name")}) == []
    analysis = await analyze(registry, workflow)
    assert slots_of(analysis) == {
        "prompt": [("2", "clip_l"), ("2", "clip_g"), ("2", "t5xxl")],
        "negative_prompt": [("3", "clip_l"), ("3", "clip_g"), ("3", "t5xxl")],
        "seed": [("7", "noise_seed")],
        "width": [("4", "width")],
        "height": [("4", "height")],
        "steps": [("6", "steps")],
        "cfg": [("7", "cfg")],
        "batch_size": [("4", "batch_size")],
    }
    defaults = analysis.proposed_defaults
    assert (defaults.width, defaults.height, defaults.steps, defaults.cfg) == (1024, 768, 28, 4.5)


@pytest.mark.parametrize(
    ("output_node", "kind"),
    [
        (
            {
                "class_type": "SaveAnimatedWEBP",
                "inputs": {
                    "images": ["1", 0],
                    "filename_prefix": "a",
                    "fps": 6.0,
                    "lossless": True,
                    "quality": 80,
                    "method": "default",
                },
            },
            "video",
        ),
        (
            {
                "class_type": "VHS_VideoCombine",
                "inputs": {"images": ["1", 0], "frame_rate": 8, "format": "video/h264-mp4"},
            },
            "video",
        ),
        ({"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}, "image"),
        ({"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}, "image"),
    ],
)
async def test_the_output_kind_follows_the_output_nodes(
    registry: NatsClient, output_node: dict[str, Any], kind: str
) -> None:
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 4, "color": 0}}}
    workflow["2"] = output_node
    workflow["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}  # a frame preview beside it
    assert (await analyze(registry, workflow)).output_kind == kind


async def test_a_workflow_without_a_known_output_or_any_slot_gets_warnings(registry: NatsClient) -> None:
    analysis = await analyze(
        registry,
        {
            "1": {
                "class_type": "MyPack_Render",
                "inputs": {"ckpt_name": "mine.safetensors", "style_model": "x.safetensors"},
            }
        },
    )
    text = " ".join(analysis.warnings)
    assert "no known output node" in text and "no parameter slot" in text and "model folder" in text
    # A custom loader's input named like a stock one still counts as a model requirement.
    assert [(m.folder, m.name, m.node_class) for m in analysis.requirements.models] == [
        ("checkpoints", "mine.safetensors", "MyPack_Render")
    ]


async def test_every_loader_the_registry_knows_names_a_real_input_and_model_folder(
    registry: NatsClient, protocol_dir: Path, object_info: dict[str, Any]
) -> None:
    """Requirements name folders as `GET /models` does and loader inputs that are file lists in `/object_info`."""
    folders = set(json.loads((protocol_dir / "http-get-models.json").read_text())["response"]["body"])

    def is_file_list(spec: list[Any]) -> bool:
        if isinstance(spec[0], list):
            return spec[0] in ([], ["pixel_space"])  # no files on the recording server; VAELoader's built-in choice
        return spec[0] == "COMBO" and spec[1].get("options") == []

    workflow: dict[str, Any] = {}
    for class_type, info in sorted(object_info.items()):
        if "Loader" not in class_type:
            continue
        required = info["input"].get("required", {})
        inputs = {name: f"{class_type}.{name}.safetensors" for name, spec in required.items() if is_file_list(spec)}
        if inputs:
            workflow[str(len(workflow) + 1)] = {"class_type": class_type, "inputs": inputs}
    assert len(workflow) >= 20
    analysis = await analyze(registry, workflow)
    found = {(m.node_class, m.input_name): m.folder for m in analysis.requirements.models}
    file_inputs = {(node["class_type"], name) for node in workflow.values() for name in node["inputs"]}
    assert set(found) == file_inputs, file_inputs ^ set(found)
    assert set(found.values()) <= folders
    for model in analysis.requirements.models:
        assert model.name == f"{model.node_class}.{model.input_name}.safetensors"
    expected = {
        ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
        ("LoraLoader", "lora_name"): "loras",
        ("VAELoader", "vae_name"): "vae",
        ("UpscaleModelLoader", "model_name"): "upscale_models",
        ("ControlNetLoader", "control_net_name"): "controlnet",
        ("UNETLoader", "unet_name"): "diffusion_models",
        ("CLIPLoader", "clip_name"): "text_encoders",
        ("DualCLIPLoader", "clip_name1"): "text_encoders",
        ("DualCLIPLoader", "clip_name2"): "text_encoders",
        ("CLIPVisionLoader", "clip_name"): "clip_vision",
        ("StyleModelLoader", "style_model_name"): "style_models",
        ("GLIGENLoader", "gligen_name"): "gligen",
        ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
        ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    }
    assert expected.items() <= found.items()
    # VAELoader's built-in decoder is no file to look for.
    builtin = await analyze(registry, {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}}})
    assert builtin.requirements.models == []


# -- the shipped render types, as ComfyUI will receive them ----------------------------------------------------


def shipped_names() -> list[str]:
    manifest = json.loads((SEED_DIR / "manifest.json").read_text())
    return [entry["name"] for entry in manifest["render_types"]]


@pytest.mark.parametrize("name", shipped_names())
async def test_each_shipped_render_type_resolves_to_a_workflow_comfyui_accepts(
    registry: NatsClient, object_info: dict[str, Any], name: str
) -> None:
    stored = await call(registry, endpoints.Registry.GET, GetRenderType(name=name))
    files = {(m.node_class, m.input_name) for m in stored.requirements.models}
    files |= {
        (stored.workflow[s.node_id]["class_type"], s.input_name)
        for s in stored.parameter_map.slots.get("input_image", [])
    }
    limits = stored.limits
    requests = [
        {},  # the defaults
        {
            "seed": 0,
            "width": limits.min_size,
            "height": limits.min_size,
            "steps": 1,
            "cfg": 0.0,
            "batch_size": 1,
            "denoise": 0.0,
        },
        {
            "seed": 2**64 - 1,
            "width": limits.max_size,
            "height": limits.max_size,
            "steps": limits.max_steps,
            "cfg": 100.0,
            "batch_size": limits.max_batch_size,
            "denoise": 1.0,
        },
    ]
    for params in requests:
        taken = {k: v for k, v in params.items() if stored.parameter_map.slots.get(k)}
        if stored.parameter_map.slots.get("input_image"):
            taken["input_image"] = "hub/input.png"
        resolved = await resolve(registry, name, prompt="a lighthouse", **taken)
        assert comfy_errors(resolved.workflow, object_info, files) == [], (name, params)
        for key, value in taken.items():
            assert getattr(resolved.params, key) == value
    assert stored.output_kind == ("video" if name == "video" else "image")
    # Every class the workflow uses is a requirement, and every model a loader names is one.
    assert stored.requirements.node_classes == sorted({n["class_type"] for n in stored.workflow.values()})
    loaders = [n for n in stored.workflow.values() if "Loader" in n["class_type"]]
    assert {m.node_class for m in stored.requirements.models} == {n["class_type"] for n in loaders}


async def test_the_shipped_files_are_plain_data_with_a_manifest(registry: NatsClient) -> None:
    manifest = json.loads((SEED_DIR / "manifest.json").read_text())
    listed = {s.name: s for s in (await call(registry, endpoints.Registry.LIST, ListRenderTypes())).render_types}
    for entry in manifest["render_types"]:
        stored = await call(registry, endpoints.Registry.GET, GetRenderType(name=entry["name"]))
        assert stored.workflow == json.loads((SEED_DIR / entry["workflow"]).read_text())
        assert stored.description == entry["description"] and listed[entry["name"]].is_default == entry.get(
            "is_default", False
        )
        for key, value in entry.get("defaults", {}).items():
            assert msgspec.to_builtins(stored.defaults)[key] == value
    assert sum(1 for entry in manifest["render_types"] if entry.get("is_default")) == 1
    # A shipped workflow and the workflow after resolve differ only in the parameter slots.
    sdxl = await call(registry, endpoints.Registry.GET, GetRenderType(name="sdxl"))
    resolved = await resolve(registry, "sdxl", prompt="x", seed=5)
    expected = copy.deepcopy(sdxl.workflow)
    expected["6"]["inputs"]["text"], expected["3"]["inputs"]["seed"] = "x", 5
    assert resolved.workflow == expected


async def test_a_workflow_without_a_text_encoder_is_offered_its_text_inputs_as_the_prompt(
    registry: NatsClient, protocol_dir: Path
) -> None:
    recorded = recorded_prompt(protocol_dir, "success-basic")  # a PrimitiveString feeds SaveImage's prefix
    analysis = await analyze(registry, recorded)
    assert "prompt" not in analysis.proposed_map.slots
    assert analysis.prompt_candidates == [Slot(node_id="5", input_name="value")]
    assert "node 5 (PrimitiveString) input `value`" in analysis.notes[0], analysis.notes
    # The offered input is accepted as the prompt slot, and a request's prompt lands there.
    chosen = ParameterMap(slots={**analysis.proposed_map.slots, "prompt": analysis.prompt_candidates})
    mapped = await analyze(registry, json.dumps(recorded), chosen)
    assert mapped.notes == [] and "prompt: node 5 (PrimitiveString) input `value`" in mapped.explanations
    await call(
        registry,
        endpoints.Registry.SAVE,
        SaveRenderType(render_type=RenderType(name="primitive-prompt", workflow=recorded, parameter_map=chosen)),
    )
    resolved = await resolve(registry, "primitive-prompt", prompt="hub/from-the-prompt")
    assert resolved.workflow["5"]["inputs"]["value"] == "hub/from-the-prompt" and resolved.ignored == []


async def test_a_workflow_without_any_text_input_says_it_takes_no_prompt(registry: NatsClient) -> None:
    shipped = Path(__file__).parents[2] / "registry-service/src/registry_service/seed/upscale.json"
    analysis = await analyze(registry, shipped.read_text())
    assert "prompt" not in analysis.proposed_map.slots and analysis.prompt_candidates == []
    assert any("takes no prompt" in note for note in analysis.notes), analysis.notes


async def test_output_nodes_the_hub_cannot_collect_are_named_and_a_workflow_of_only_those_is_refused(
    registry: NatsClient, protocol_dir: Path
) -> None:
    # SaveImageWebsocket sends its images as binary frames (history outputs {}): the hub collects those.
    ws_save = recorded_prompt(protocol_dir, "no-client_id-ws_save")
    assert [n["class_type"] for n in ws_save.values()] == ["EmptyImage", "SaveImageWebsocket"]
    analysis = await analyze(registry, ws_save)
    assert analysis.output_kind == "image"
    assert not [w for w in analysis.warnings if "SaveImageWebsocket" in w or "output" in w], analysis.warnings
    saved = await call(
        registry, endpoints.Registry.SAVE, SaveRenderType(render_type=RenderType(name="ws-save", workflow=ws_save))
    )
    assert saved.version == 1

    basic = recorded_prompt(protocol_dir, "success-basic")
    text_only = {
        node_id: node
        for node_id, node in basic.items()
        if node["class_type"] not in ("SaveImage", "PreviewImage")  # leaves PreviewAny as the only output
    }
    (preview_any,) = [n for n, node in text_only.items() if node["class_type"] == "PreviewAny"]
    warning = (await analyze(registry, text_only)).warnings
    assert any(w.startswith(f"node {preview_any} (PreviewAny) shows text") for w in warning), warning
    with pytest.raises(HubError) as raised:
        await call(
            registry,
            endpoints.Registry.SAVE,
            SaveRenderType(render_type=RenderType(name="text-only", workflow=text_only)),
        )
    error = raised.value.info
    assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "render_type.workflow"), error
    assert f"node {preview_any} (PreviewAny)" in error.message and "SaveImageWebsocket" in error.message
    with pytest.raises(HubError):
        await call(registry, endpoints.Registry.GET, GetRenderType(name="text-only"))  # nothing was stored
