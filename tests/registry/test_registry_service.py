"""registry-service over real NATS: shipped render types, resolve, CRUD with versions, history and rollback."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness import ServiceProcess, hub_env, service_running
from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.endpoints import Endpoint
from contracts.errors import ErrorCode, ErrorInfo, HubError
from contracts.messages.render_types import (
    DeletedRenderType,
    DeleteRenderType,
    GenerationParams,
    GetRenderType,
    GetRenderTypeHistory,
    ListRenderTypes,
    ParameterMap,
    ParameterSpec,
    RenderDefaults,
    RenderLimits,
    RenderType,
    RenderTypeHistory,
    RenderTypeList,
    ResolvedWorkflow,
    ResolveRenderType,
    RollbackRenderType,
    SaveRenderType,
    SetDefaultRenderType,
    Slot,
)
from contracts.runtime.bus import call, request
from hub_deploy.natsserver import NatsServer

R = endpoints.Registry
SHIPPED = {"sdxl", "flux", "img2img", "upscale", "video"}

# EmptyImage -> SaveImage: stock nodes only, as in the recorded ComfyUI exchanges.
TINY: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hub/tiny"}},
}
TINY_MAP = ParameterMap(
    slots={
        "width": [Slot(node_id="1", input_name="width")],
        "height": [Slot(node_id="1", input_name="height")],
        "batch_size": [Slot(node_id="1", input_name="batch_size")],
    }
)


@pytest.fixture(scope="module")
async def registry(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsClient]:
    """One registry for the module's tests (each test uses render types of its own names where it writes)."""
    async with service_running("registry", nats_server.url, tmp_path_factory.mktemp("registry")) as nc:
        yield nc


async def refused(nc: NatsClient, endpoint: Endpoint[Any, Any], message: msgspec.Struct | msgspec.Raw) -> ErrorInfo:
    with pytest.raises(HubError) as raised:
        await request(nc, endpoint.subject, message, dict)
    return raised.value.info


async def resolve(nc: NatsClient, render_type: str | None = None, **params: Any) -> ResolvedWorkflow:
    return await call(
        nc, endpoints.Registry.RESOLVE, ResolveRenderType(render_type=render_type, params=GenerationParams(**params))
    )


async def get(nc: NatsClient, name: str) -> RenderType:
    return await call(nc, endpoints.Registry.GET, GetRenderType(name=name))


async def save(nc: NatsClient, render_type: RenderType, **fields: Any) -> RenderType:
    return await call(nc, endpoints.Registry.SAVE, SaveRenderType(render_type=render_type, **fields))


async def history(nc: NatsClient, name: str, snapshots: bool = False) -> RenderTypeHistory:
    return await call(nc, endpoints.Registry.HISTORY, GetRenderTypeHistory(name=name, include_snapshots=snapshots))


async def listing(nc: NatsClient, include_disabled: bool = True) -> RenderTypeList:
    return await call(nc, endpoints.Registry.LIST, ListRenderTypes(include_disabled=include_disabled))


def tiny(name: str, **fields: Any) -> RenderType:
    return RenderType(name=name, workflow=copy.deepcopy(TINY), parameter_map=TINY_MAP, **fields)


# -- the shipped render types, described for callers -----------------------------------------------------


async def test_the_shipped_render_types_are_listed_with_the_parameters_each_accepts(registry: NatsClient) -> None:
    render_types = {s.name: s for s in (await listing(registry, include_disabled=False)).render_types}
    assert set(render_types) >= SHIPPED
    assert [s.name for s in render_types.values() if s.is_default] == ["sdxl"]
    for summary in render_types.values():
        assert summary.description and summary.enabled and summary.version >= 1
        assert summary.parameters == [spec.name for spec in summary.parameter_specs]

    sdxl = render_types["sdxl"]
    assert sdxl.parameters == ["prompt", "negative_prompt", "seed", "width", "height", "steps", "cfg", "batch_size"]
    specs = {spec.name: spec for spec in sdxl.parameter_specs}
    assert (specs["width"].minimum, specs["width"].maximum, specs["width"].multiple_of) == (64, 8192, 8)
    assert specs["width"].default == 1024 and specs["steps"].default == sdxl.defaults["steps"] == 30
    assert specs["seed"].default is None and "random" in specs["seed"].description
    assert specs["negative_prompt"].default == sdxl.defaults["negative_prompt"] != ""
    assert [(m.folder, m.node_class, m.input_name) for m in sdxl.requirements.models] == [
        ("checkpoints", "CheckpointLoaderSimple", "ckpt_name")
    ]
    assert {"KSampler", "CLIPTextEncode", "SaveImage"} <= set(sdxl.requirements.node_classes)

    upscale = render_types["upscale"]
    assert upscale.parameters == ["input_image"] and upscale.parameter_specs[0].required
    assert [(m.folder, m.name) for m in upscale.requirements.models] == [("upscale_models", "RealESRGAN_x4plus.pth")]
    assert "denoise" in render_types["img2img"].parameters and "input_image" in render_types["img2img"].parameters
    assert "denoise" not in sdxl.parameters  # text to image: denoise below 1 would only spoil the result
    assert render_types["video"].output_kind == "video" and render_types["sdxl"].output_kind == "image"
    # A summary's defaults are those of the parameters the workflow has, no more.
    for summary in render_types.values():
        assert set(summary.defaults) <= set(summary.parameters), summary
    assert set(sdxl.defaults) == {"negative_prompt", "width", "height", "steps", "cfg", "batch_size"}
    assert upscale.defaults == {}  # no size, steps or cfg: the input image and the model decide
    flux = render_types["flux"]
    assert flux.defaults == {"width": 1024, "height": 1024, "steps": 20, "batch_size": 1}  # no cfg, no negative
    flux_width = next(s for s in render_types["flux"].parameter_specs if s.name == "width")
    assert (flux_width.multiple_of, flux_width.maximum) == (16, 2048)
    assert (specs["seed"].maximum, specs["cfg"].maximum) == (2**63 - 1, 50)
    for summary in render_types.values():
        assert_specs_within_the_request_limits(summary.parameter_specs)


def assert_specs_within_the_request_limits(specs: list[ParameterSpec]) -> None:
    """Every advertised bound is one a generation request can reach: the request's validation agrees with it."""
    from contracts.messages.jobs import GenerationRequest

    schema = msgspec.json.schema(GenerationRequest)
    fields = schema["$defs"]["GenerationRequest"]["properties"]
    for spec in specs:
        field = fields.get("count" if spec.name == "batch_size" else spec.name)
        if field is None or spec.maximum is None:
            continue
        bounds = next(option for option in field.get("anyOf", [field]) if option.get("type") in ("integer", "number"))
        assert bounds["minimum"] <= spec.minimum and spec.maximum <= bounds["maximum"], (spec, bounds)
        if spec.name != "batch_size":
            msgspec.convert({"prompt": "x", spec.name: spec.maximum}, GenerationRequest)  # accepted, not refused


def test_parameter_specs_never_advertise_more_than_a_request_may_ask() -> None:
    from registry_service.parameters import parameter_specs

    generous = tiny("generous", limits=RenderLimits(min_size=16, max_size=16384, max_steps=10000, max_batch_size=64))
    specs = {spec.name: spec for spec in parameter_specs(generous)}
    assert (specs["width"].minimum, specs["width"].maximum, specs["batch_size"].maximum) == (64, 8192, 16)
    assert_specs_within_the_request_limits(list(specs.values()))


# -- resolve ------------------------------------------------------------------------------------------------


async def test_resolve_injects_the_parameters_into_the_default_workflow_and_draws_a_seed(registry: NatsClient) -> None:
    stored = await get(registry, "sdxl")
    resolved = await resolve(registry, prompt="a red fox in snow", width=768, height=512)
    assert (resolved.render_type, resolved.version, resolved.output_kind) == ("sdxl", stored.version, "image")
    assert resolved.requirements == stored.requirements and resolved.ignored == []
    nodes = resolved.workflow
    assert nodes["6"]["inputs"]["text"] == "a red fox in snow"
    assert nodes["7"]["inputs"]["text"] == stored.defaults.negative_prompt
    assert (nodes["5"]["inputs"]["width"], nodes["5"]["inputs"]["height"]) == (768, 512)
    assert nodes["3"]["inputs"]["steps"] == 30 and nodes["3"]["inputs"]["cfg"] == 7.0
    seed = resolved.params.seed
    assert seed is not None and 0 <= seed < 2**53 and nodes["3"]["inputs"]["seed"] == seed
    assert resolved.params == GenerationParams(
        prompt="a red fox in snow",
        negative_prompt=stored.defaults.negative_prompt,
        seed=seed,
        width=768,
        height=512,
        steps=30,
        cfg=7.0,
        batch_size=1,
    )
    # Everything that is not a parameter is left exactly as stored.
    untouched = copy.deepcopy(stored.workflow)
    for slots in stored.parameter_map.slots.values():
        for slot in slots:
            untouched[slot.node_id]["inputs"][slot.input_name] = nodes[slot.node_id]["inputs"][slot.input_name]
    assert nodes == untouched

    # Another request draws another seed; the reported parameters reproduce the first workflow exactly.
    assert (await resolve(registry, prompt="a red fox in snow")).params.seed != seed
    again = await call(
        registry, endpoints.Registry.RESOLVE, ResolveRenderType(render_type="sdxl", params=resolved.params)
    )
    assert again.workflow == resolved.workflow and again.params == resolved.params


@pytest.mark.parametrize(
    ("render_type", "params", "field", "words"),
    [
        ("sdxl", {"width": 1001}, "params.width", "multiple of 8 (got 1001); use e.g. 1000 or 1008"),
        ("sdxl", {"width": 32}, "params.width", "between 64 and 8192"),
        ("sdxl", {"height": 9000}, "params.height", "between 64 and 8192"),
        ("flux", {"width": 1000}, "params.width", "multiple of 16"),
        ("video", {"height": 1600}, "params.height", "between 64 and 1280"),
        ("sdxl", {"steps": 0}, "params.steps", "between 1 and 200"),
        ("sdxl", {"steps": 201}, "params.steps", "between 1 and 200"),
        ("sdxl", {"cfg": -0.5}, "params.cfg", "between 0 and 100"),
        ("sdxl", {"cfg": 100.5}, "params.cfg", "between 0 and 100"),
        ("sdxl", {"batch_size": 17}, "params.batch_size", "between 1 and 16"),
        ("sdxl", {"batch_size": 0}, "params.batch_size", "between 1 and 16"),
        ("video", {"batch_size": 3}, "params.batch_size", "between 1 and 2"),
        ("sdxl", {"seed": -1}, "params.seed", "between 0 and 18446744073709551615"),
        ("sdxl", {"seed": 2**64}, "params.seed", "between 0 and 18446744073709551615"),
        ("img2img", {"input_image": "x.png", "denoise": 1.5}, "params.denoise", "between 0 and 1"),
        ("img2img", {}, "params.input_image", "starts from an input image"),
        ("img2img", {"input_image": "../../etc/passwd"}, "params.input_image", "no '..'"),
        ("img2img", {"input_image": "/tmp/x.png"}, "params.input_image", "no leading '/'"),
    ],
)
async def test_resolve_rejects_bad_values_naming_the_field(
    registry: NatsClient, render_type: str, params: dict[str, Any], field: str, words: str
) -> None:
    error = await refused(
        registry, R.RESOLVE, ResolveRenderType(render_type=render_type, params=GenerationParams(**params))
    )
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.field == field
    assert words in error.message


async def test_a_value_of_the_wrong_type_is_named_by_the_decoder(registry: NatsClient) -> None:
    body = msgspec.Raw(b'{"render_type": "sdxl", "params": {"width": "wide", "prompt": "x"}}')
    error = await refused(registry, R.RESOLVE, body)
    assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "params.width")
    error = await refused(registry, R.RESOLVE, msgspec.Raw(b'{"render_type": "sdxl", "prams": {}}'))
    assert error.field == "prams" and "unknown field" in error.message


async def test_image_render_types_take_the_input_image_and_ignore_what_they_do_not_use(registry: NatsClient) -> None:
    img2img = await resolve(registry, "img2img", prompt="as an oil painting", input_image="hub/job-1.png")
    assert img2img.workflow["2"]["inputs"]["image"] == "hub/job-1.png"
    assert img2img.workflow["8"]["inputs"]["denoise"] == 0.6 and img2img.params.denoise == 0.6
    assert img2img.workflow["6"]["inputs"]["text"] == "as an oil painting"
    assert [s.node_id for s in img2img.parameter_map.slots["input_image"]] == ["2"]
    stronger = await resolve(registry, "img2img", input_image="a.png", denoise=0.35, batch_size=4)
    assert stronger.workflow["8"]["inputs"]["denoise"] == 0.35
    assert stronger.workflow["5"]["inputs"]["amount"] == 4  # RepeatLatentBatch makes the batch

    stored = await get(registry, "upscale")
    upscale = await resolve(registry, "upscale", prompt="ignored", width=512, input_image="in.png")
    assert upscale.ignored == ["prompt", "width"]
    assert upscale.params == GenerationParams(input_image="in.png")  # no seed drawn: it has none
    expected = copy.deepcopy(stored.workflow)
    expected["1"]["inputs"]["image"] = "in.png"
    assert upscale.workflow == expected


async def test_unknown_and_disabled_render_types_cannot_be_resolved(registry: NatsClient) -> None:
    error = await refused(registry, R.RESOLVE, ResolveRenderType(render_type="no-such-type"))
    assert (error.code, error.field) == (ErrorCode.NOT_FOUND, "render_type")
    assert isinstance(error.details, dict) and set(error.details["valid"]) >= SHIPPED  # type: ignore[arg-type]
    assert "sdxl" in error.message

    await save(registry, tiny("switched-off", enabled=False))
    error = await refused(registry, R.RESOLVE, ResolveRenderType(render_type="switched-off"))
    assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "render_type")
    assert "disabled" in error.message and "switched-off" not in error.details["valid"]  # type: ignore[index]
    assert "switched-off" not in {s.name for s in (await listing(registry, include_disabled=False)).render_types}
    assert "switched-off" in {s.name for s in (await listing(registry)).render_types}
    error = await refused(registry, R.GET, GetRenderType(name="no-such-type"))
    assert error.code is ErrorCode.NOT_FOUND and "sdxl" in error.details["valid"]  # type: ignore[index]


# -- save, versions, history, rollback --------------------------------------------------------------------


async def test_saves_are_versioned_checked_for_staleness_and_can_be_rolled_back(registry: NatsClient) -> None:
    first = await save(registry, tiny("lab", description="first"), changed_by="alice")
    assert (first.version, first.updated_by, first.is_default) == (1, "alice", False)
    assert first.requirements.node_classes == ["EmptyImage", "SaveImage"]  # derived, not taken from the caller

    edited = msgspec.structs.replace(first, description="second", defaults=RenderDefaults(width=256, height=256))
    edited.workflow["1"]["inputs"]["color"] = 255
    second = await save(registry, edited, changed_by="bob", note="blue background")
    assert second.version == 2 and (await get(registry, "lab")).workflow["1"]["inputs"]["color"] == 255

    stale = msgspec.structs.replace(first, description="from an old form")
    error = await refused(registry, R.SAVE, SaveRenderType(render_type=stale))
    assert error.code is ErrorCode.CONFLICT and error.details == {"current_version": 2}
    assert "version 2" in error.message and "reload" in error.message
    error = await refused(registry, R.SAVE, SaveRenderType(render_type=tiny("lab")))
    assert error.code is ErrorCode.CONFLICT and "already exists" in error.message
    assert error.field == "render_type.name"

    # Saving what is stored again makes no new version.
    assert (await save(registry, second)).version == 2

    rolled = await call(
        registry, endpoints.Registry.ROLLBACK, RollbackRenderType(name="lab", version=1, changed_by="carol")
    )
    assert rolled.version == 3 and rolled.description == "first"
    assert rolled.workflow == TINY and rolled.defaults == RenderDefaults()
    assert (await resolve(registry, "lab")).workflow == {
        "1": {**TINY["1"], "inputs": {**TINY["1"]["inputs"], "width": 1024, "height": 1024}},
        "2": TINY["2"],
    }

    log = await history(registry, "lab")
    assert [(v.version, v.changed_by, v.note) for v in log.versions] == [
        (3, "carol", "rolled back to version 1"),
        (2, "bob", "blue background"),
        (1, "alice", "created"),
    ]
    assert all(v.snapshot is None for v in log.versions)
    full = await history(registry, "lab", snapshots=True)
    snapshots = {v.version: v.snapshot for v in full.versions}
    assert snapshots[2] is not None and snapshots[2].workflow["1"]["inputs"]["color"] == 255
    assert snapshots[1] is not None and snapshots[1].description == "first"

    error = await refused(registry, R.ROLLBACK, RollbackRenderType(name="lab", version=9))
    assert error.code is ErrorCode.NOT_FOUND and error.details == {"valid": [1, 2, 3]}
    error = await refused(registry, R.ROLLBACK, RollbackRenderType(name="lab", version=2, expected_version=2))
    assert error.code is ErrorCode.CONFLICT and len((await history(registry, "lab")).versions) == 3
    error = await refused(registry, R.HISTORY, GetRenderTypeHistory(name="no-such-type"))
    assert error.code is ErrorCode.NOT_FOUND


async def test_a_rename_keeps_the_history_and_frees_the_old_name(registry: NatsClient) -> None:
    created = await save(registry, tiny("before-rename"))
    renamed = await save(registry, msgspec.structs.replace(created, name="after-rename"), original_name="before-rename")
    assert (renamed.name, renamed.version) == ("after-rename", 2)
    assert [v.note for v in (await history(registry, "after-rename")).versions] == [
        "renamed from 'before-rename'",
        "created",
    ]
    assert (await refused(registry, R.GET, GetRenderType(name="before-rename"))).code is ErrorCode.NOT_FOUND
    error = await refused(
        registry,
        R.SAVE,
        SaveRenderType(render_type=msgspec.structs.replace(renamed, name="sdxl"), original_name="after-rename"),
    )
    assert (error.code, error.field) == (ErrorCode.CONFLICT, "render_type.name")


UI_FORMAT = {
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "pos": [0, 0],
            "outputs": [{"name": "IMAGE", "links": [1]}],
            "widgets_values": [512, 512, 1, 0],
        },
        {
            "id": 2,
            "type": "SaveImage",
            "pos": [300, 0],
            "inputs": [{"name": "images", "link": 1}],
            "widgets_values": ["hub"],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def _with(workflow: dict[str, Any], node: str, **inputs: Any) -> dict[str, Any]:
    changed = copy.deepcopy(workflow)
    changed[node]["inputs"].update(inputs)
    return changed


def _slots(**slots: tuple[str, str]) -> ParameterMap:
    return ParameterMap(slots={name: [Slot(node_id=n, input_name=i)] for name, (n, i) in slots.items()})  # type: ignore[misc]


WF = "render_type.workflow"
MAP = "render_type.parameter_map.slots"
CYCLE = {
    "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
}
SAME_INPUT_TWICE = ParameterMap(
    slots={"width": [Slot(node_id="1", input_name="width")], "height": [Slot(node_id="1", input_name="width")]}
)
NO_MAP = ParameterMap()
BAD_EDITS: list[tuple[str, dict[str, Any], str, str]] = [
    ("ui format", {"workflow": UI_FORMAT}, WF, "Export (API)"),
    ("dangling link", {"workflow": _with(TINY, "2", images=["7", 0])}, f"{WF}.2.inputs.images", "dangling"),
    ("bad link shape", {"workflow": _with(TINY, "2", images=["1", 0, 0])}, f"{WF}.2.inputs.images", "[source node"),
    ("numeric link id", {"workflow": _with(TINY, "2", images=[1, 0])}, f"{WF}.2.inputs.images", "must be a string"),
    ("no class_type", {"workflow": {"1": {"inputs": {}}, "2": TINY["2"]}}, f"{WF}.1.class_type", "class_type"),
    ("cycle", {"workflow": CYCLE, "parameter_map": NO_MAP}, WF, "cycle (1 → 2 → 1)"),
    ("empty workflow", {"workflow": {}, "parameter_map": NO_MAP}, WF, "no nodes"),
    (
        "map to a missing node",
        {"parameter_map": _slots(width=("9", "width"))},
        f"{MAP}.width[0]",
        "not in the workflow",
    ),
    ("map to a missing input", {"parameter_map": _slots(width=("1", "wide"))}, f"{MAP}.width[0]", "has no such input"),
    ("map to a link", {"parameter_map": _slots(input_image=("2", "images"))}, f"{MAP}.input_image[0]", "linked from"),
    ("map to another type", {"parameter_map": _slots(prompt=("1", "color"))}, f"{MAP}.prompt[0]", "holds 0"),
    ("one input twice", {"parameter_map": SAME_INPUT_TWICE}, f"{MAP}.height[0]", "both `width` and `height`"),
    ("default off the grid", {"defaults": RenderDefaults(width=1001)}, "render_type.defaults.width", "multiple of 8"),
    ("bad limits", {"limits": RenderLimits(size_multiple=12)}, "render_type.limits.size_multiple", "8, 16, 32, 64"),
]


@pytest.mark.parametrize(("case", "change", "field", "words"), BAD_EDITS, ids=[c[0] for c in BAD_EDITS])
async def test_a_rejected_edit_changes_nothing(
    registry: NatsClient, case: str, change: dict[str, Any], field: str, words: str
) -> None:
    name = "guarded-" + case.replace(" ", "-")
    stored = await save(registry, tiny(name))
    before = await history(registry, name, snapshots=True)
    error = await refused(registry, R.SAVE, SaveRenderType(render_type=msgspec.structs.replace(stored, **change)))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.field == field
    assert words in error.message
    assert await get(registry, name) == stored
    assert await history(registry, name, snapshots=True) == before
    # The same mistake in a new render type stores nothing either.
    created = msgspec.structs.replace(stored, name=f"{name}-new", version=0, **change)
    assert (await refused(registry, R.SAVE, SaveRenderType(render_type=created))).field == field
    assert (await refused(registry, R.GET, GetRenderType(name=f"{name}-new"))).code is ErrorCode.NOT_FOUND


async def test_of_concurrent_edits_of_one_version_exactly_one_wins(registry: NatsClient) -> None:
    base = await save(registry, tiny("contended"))
    edits = [msgspec.structs.replace(base, description=f"edit {i}") for i in range(6)]
    results = await asyncio.gather(*(save(registry, edit) for edit in edits), return_exceptions=True)
    winners = [r for r in results if isinstance(r, RenderType)]
    losers = [r for r in results if isinstance(r, HubError)]
    assert len(winners) == 1 and len(losers) == 5, results
    assert all(loser.code is ErrorCode.CONFLICT for loser in losers)
    stored = await get(registry, "contended")
    assert stored.version == 2 and stored.description == winners[0].description
    assert [v.version for v in (await history(registry, "contended")).versions] == [2, 1]


# -- the default, delete ---------------------------------------------------------------------------------


async def test_there_is_always_exactly_one_enabled_default(registry: NatsClient) -> None:
    try:
        flux = await call(registry, endpoints.Registry.SET_DEFAULT, SetDefaultRenderType(name="flux"))
        assert flux.is_default
        assert [s.name for s in (await listing(registry)).render_types if s.is_default] == ["flux"]
        assert (await resolve(registry, prompt="x")).render_type == "flux"

        error = await refused(
            registry, R.SAVE, SaveRenderType(render_type=msgspec.structs.replace(flux, enabled=False))
        )
        assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "render_type.enabled")
        error = await refused(
            registry, R.SAVE, SaveRenderType(render_type=msgspec.structs.replace(flux, is_default=False))
        )
        assert error.field == "render_type.is_default" and "set_default" in error.message
        error = await refused(registry, R.DELETE, DeleteRenderType(name="flux"))
        assert error.code is ErrorCode.CONFLICT and "make another one the default first" in error.message

        await save(registry, tiny("never-default", enabled=False))
        error = await refused(registry, R.SET_DEFAULT, SetDefaultRenderType(name="never-default"))
        assert error.code is ErrorCode.INVALID_REQUEST and "enable it" in error.message
        error = await refused(registry, R.SET_DEFAULT, SetDefaultRenderType(name="no-such-type"))
        assert error.code is ErrorCode.NOT_FOUND

        # Saving another render type as the default moves the default there.
        moved = await save(registry, tiny("saved-as-default", is_default=True))
        assert moved.is_default and not (await get(registry, "flux")).is_default
    finally:
        await call(registry, endpoints.Registry.SET_DEFAULT, SetDefaultRenderType(name="sdxl"))
    assert [s.name for s in (await listing(registry)).render_types if s.is_default] == ["sdxl"]


async def test_delete_removes_the_render_type_and_its_history(registry: NatsClient) -> None:
    created = await save(registry, tiny("short-lived"))
    await save(registry, msgspec.structs.replace(created, description="edited"))
    error = await refused(registry, R.DELETE, DeleteRenderType(name="short-lived", expected_version=1))
    assert error.code is ErrorCode.CONFLICT
    deleted = await call(registry, endpoints.Registry.DELETE, DeleteRenderType(name="short-lived"))
    assert deleted == DeletedRenderType(name="short-lived", versions_removed=2)
    assert (await refused(registry, R.GET, GetRenderType(name="short-lived"))).code is ErrorCode.NOT_FOUND
    assert (await refused(registry, R.DELETE, DeleteRenderType(name="short-lived"))).code is ErrorCode.NOT_FOUND
    # The name can be used again, starting a fresh history.
    again = await save(registry, tiny("short-lived"))
    assert again.version == 1 and len((await history(registry, "short-lived")).versions) == 1


# -- resolving reads a cached render type: every change is seen at once -------------------------------------


async def test_a_resolve_after_a_change_uses_the_changed_render_type(registry: NatsClient) -> None:
    created = await save(registry, tiny("kept-for-resolve", defaults=RenderDefaults(width=256, height=256)))
    assert (await resolve(registry, "kept-for-resolve")).workflow["1"]["inputs"]["width"] == 256  # now kept
    edited = await save(registry, msgspec.structs.replace(created, defaults=RenderDefaults(width=320, height=320)))
    assert (await resolve(registry, "kept-for-resolve")).workflow["1"]["inputs"]["width"] == 320
    await call(registry, R.ROLLBACK, RollbackRenderType(name="kept-for-resolve", version=1))
    assert (await resolve(registry, "kept-for-resolve")).workflow["1"]["inputs"]["width"] == 256
    disabled = msgspec.structs.replace(edited, version=3, enabled=False)
    await save(registry, disabled)
    error = await refused(registry, R.RESOLVE, ResolveRenderType(render_type="kept-for-resolve"))
    assert "disabled" in error.message
    await call(registry, R.DELETE, DeleteRenderType(name="kept-for-resolve"))
    error = await refused(registry, R.RESOLVE, ResolveRenderType(render_type="kept-for-resolve"))
    assert error.code is ErrorCode.NOT_FOUND


async def test_every_registry_replica_resolves_with_a_change_made_by_another(tmp_path: Path) -> None:
    """Two registries on one database: the one that did not make the change hears of it (topics.Registry.CHANGED)
    and drops the render type it kept for resolving, instead of resolving with the old one for a while."""
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    try:
        async with service_running("registry", server.url, tmp_path) as nc:
            second = ServiceProcess("registry", hub_env(server.url, tmp_path / "data"), tmp_path / "second.log")
            second.start()
            try:
                await second.wait_healthy(nc)
                created = await save(nc, tiny("shared", defaults=RenderDefaults(width=256, height=256)))
                widths = [(await resolve(nc, "shared")).workflow["1"]["inputs"]["width"] for _ in range(30)]
                assert set(widths) == {256}  # both replicas answered (queue group) and kept it
                await save(nc, msgspec.structs.replace(created, defaults=RenderDefaults(width=320, height=320)))
                await asyncio.sleep(0.2)  # the announcement reaches the other replica
                widths = [(await resolve(nc, "shared")).workflow["1"]["inputs"]["width"] for _ in range(30)]
                assert set(widths) == {320}
            finally:
                assert await second.stop() == 0, second.log()
    finally:
        server.stop()
