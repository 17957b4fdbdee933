"""Workflow import analysis: find the usual parameter slots, the output kind and the model files a workflow needs.

Everything here reads an API-format workflow already checked by `workflow.check_workflow`; nothing is changed.
The proposed map is a starting point the admin corrects: custom nodes and unusual graphs produce warnings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts.messages.render_types import (
    ModelRef,
    OutputKind,
    ParameterMap,
    ParameterName,
    RenderDefaults,
    RenderLimits,
    Requirements,
    Slot,
    WorkflowAnalysis,
)
from registry_service import comfy_nodes as known
from registry_service.parameters import COMFY_MAX_CFG, PARAMETER_ORDER, PARAMETERS, check_map
from registry_service.workflow import (
    check_workflow,
    describe_node,
    invalid,
    is_link,
    node_ids_in_order,
    parse_workflow_json,
)

Workflow = dict[str, Any]


def requirements_of(workflow: Workflow) -> Requirements:
    """The node classes and model files a ComfyUI instance must offer to run `workflow`."""
    return _requirements(workflow, warnings=[])


def _requirements(workflow: Workflow, warnings: list[str]) -> Requirements:
    models: dict[tuple[str, str], ModelRef] = {}
    for node_id in node_ids_in_order(workflow):
        node = workflow[node_id]
        class_type: str = node["class_type"]
        loader_inputs = known.MODEL_LOADERS.get(class_type)
        for input_name, value in node["inputs"].items():
            if not isinstance(value, str) or not value:
                continue
            if loader_inputs is not None:
                folder = loader_inputs.get(input_name)
                if folder is None or value in known.BUILT_IN_MODEL_CHOICES.get(class_type, ()):
                    continue
            elif value.lower().endswith(known.MODEL_FILE_SUFFIXES):
                folder = known.GENERIC_MODEL_INPUTS.get(input_name)
                if folder is None:
                    warnings.append(
                        f"{describe_node(workflow, node_id)} input `{input_name}` names the file {value!r}, which "
                        "looks like a model; the hub cannot tell its model folder, so instances are not checked for it"
                    )
                    continue
            else:
                continue
            models.setdefault(
                (folder, value), ModelRef(folder=folder, name=value, node_class=class_type, input_name=input_name)
            )
    node_classes = sorted({node["class_type"] for node in workflow.values()})
    return Requirements(node_classes=node_classes, models=sorted(models.values(), key=lambda m: (m.folder, m.name)))


def output_kind_of(workflow: Workflow, warnings: list[str] | None = None) -> OutputKind:
    kinds = {
        known.OUTPUT_KINDS[node["class_type"]] for node in workflow.values() if node["class_type"] in known.OUTPUT_KINDS
    }
    for kind in known.OUTPUT_KIND_PRIORITY:
        if kind in kinds:
            return kind
    if warnings is not None:
        warnings.append(
            "no known output node (SaveImage, PreviewImage, SaveAnimatedWEBP, SaveVideo, VHS_VideoCombine, ...) was "
            "found; ComfyUI runs only workflows with an output node. If a custom node saves the result, set the "
            "output kind yourself"
        )
    return "image"


def uncollectable_outputs(workflow: Workflow) -> list[str]:
    """`node 4 (PreviewAny): shows text ...` for each output node whose result the hub cannot store."""
    return [
        f"node {node_id} ({node['class_type']}) {known.UNCOLLECTABLE_OUTPUTS[node['class_type']]}"
        for node_id, node in workflow.items()
        if node["class_type"] in known.UNCOLLECTABLE_OUTPUTS
    ]


def check_outputs(workflow: Workflow, *, field: str) -> None:
    """Refuse a workflow whose known output nodes all produce nothing the hub can store: each job of it would
    end without a result. Workflows without a known output node pass (a custom node may save the result)."""
    uncollectable = uncollectable_outputs(workflow)
    collectable = [
        node_id
        for node_id, node in workflow.items()
        if node["class_type"] in known.OUTPUT_KINDS and node["class_type"] not in known.UNCOLLECTABLE_OUTPUTS
    ]
    if uncollectable and not collectable:
        raise invalid(
            f"the workflow's output nodes give the hub nothing to store ({'; '.join(uncollectable)}), so every job "
            "of it would fail; add a node that saves the result (SaveImage, SaveImageWebsocket, SaveAnimatedWEBP, "
            "SaveVideo, SaveAudio, ...)",
            field=field,
            details={"uncollectable_outputs": uncollectable},
        )


@dataclass
class _Finder:
    """Walks one workflow and collects the slots it finds for each parameter."""

    workflow: Workflow
    slots: dict[ParameterName, list[Slot]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # -- helpers --------------------------------------------------------------------------------------

    def node(self, node_id: str) -> dict[str, Any]:
        return self.workflow[node_id]

    def class_of(self, node_id: str) -> str:
        return self.workflow[node_id]["class_type"]

    def add(self, parameter: ParameterName, node_id: str, input_name: str) -> None:
        slot = Slot(node_id=node_id, input_name=input_name)
        taken = self.slots.setdefault(parameter, [])
        if slot in taken or any(slot in others for name, others in self.slots.items() if name != parameter):
            return
        taken.append(slot)

    def literal_slot(self, node_id: str, input_name: str, kind: type | tuple[type, ...]) -> tuple[str, str] | None:
        """Where the value of an input really lives: on the node, or on a primitive node it is linked from."""
        for _ in range(4):  # follows short chains of primitive nodes (PrimitiveInt, PrimitiveString, ...)
            value = self.node(node_id)["inputs"].get(input_name)
            if is_link(value):
                source = self.node(value[0])
                literals = [name for name, v in source["inputs"].items() if _is_kind(v, kind)]
                links = [name for name, v in source["inputs"].items() if is_link(v)]
                if len(literals) == 1 and not links:
                    return value[0], literals[0]
                if len(links) == 1 and not literals:
                    node_id, input_name = value[0], links[0]
                    continue
                return None
            return (node_id, input_name) if _is_kind(value, kind) else None
        return None

    def add_literal(self, parameter: ParameterName, node_id: str, input_name: str) -> None:
        found = self.literal_slot(node_id, input_name, PARAMETERS[parameter].slot_types)
        if found is not None:
            self.add(parameter, *found)

    def upstream(self, node_id: str, input_name: str) -> tuple[str, int] | None:
        value = self.node(node_id)["inputs"].get(input_name)
        return (value[0], value[1]) if is_link(value) else None

    # -- prompts --------------------------------------------------------------------------------------

    def trace_text(self, parameter: ParameterName, start: tuple[str, int] | None) -> None:
        """Follow conditioning back from a sampler or guider to the text encoders that made it."""
        pending = [start] if start else []
        seen: set[tuple[str, int]] = set()
        while pending:
            node_id, output_index = pending.pop()
            if (node_id, output_index) in seen:
                continue
            seen.add((node_id, output_index))
            class_type = self.class_of(node_id)
            inputs = self.node(node_id)["inputs"]
            text_inputs = known.TEXT_INPUTS.get(class_type) or tuple(
                name for name in known.GENERIC_TEXT_INPUTS if name in inputs
            )
            found = False
            for input_name in text_inputs:
                slot = self.literal_slot(node_id, input_name, (str,))
                if slot is not None:
                    self.add(parameter, *slot)
                    found = True
            if found:
                continue
            if "positive" in inputs and "negative" in inputs:
                # A node passing a conditioning pair through (ControlNetApplyAdvanced, InpaintModelConditioning...):
                # its first output carries the positive side, its second the negative.
                side = {0: "positive", 1: "negative"}.get(output_index)
                if side and is_link(inputs[side]):
                    pending.append((inputs[side][0], inputs[side][1]))
                continue
            for input_name, value in inputs.items():
                if is_link(value) and any(hint in input_name for hint in known.CONDITIONING_INPUT_HINTS):
                    pending.append((value[0], value[1]))

    # -- samplers -------------------------------------------------------------------------------------

    def samplers(self) -> list[str]:
        return [n for n in node_ids_in_order(self.workflow) if self.class_of(n) in known.SAMPLER_CLASSES]

    def latent_origin(self, sampler_id: str) -> set[str]:
        """The nodes the sampler's latent comes from, up to (and including) any earlier sampler."""
        start = self.upstream(sampler_id, "latent_image")
        pending = [start[0]] if start else []
        seen: set[str] = set()
        while pending:
            node_id = pending.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            if self.class_of(node_id) not in known.SAMPLER_CLASSES:
                pending.extend(value[0] for value in self.node(node_id)["inputs"].values() if is_link(value))
        return seen

    def is_first_pass(self, sampler_id: str) -> bool:
        """True unless the sampler refines the latent of another sampler (a refiner or hires-fix pass)."""
        return not any(self.class_of(n) in known.SAMPLER_CLASSES for n in self.latent_origin(sampler_id))

    def starts_from_noise(self, sampler_id: str) -> bool:
        """True when the sampler starts from an empty latent (text to image): denoise is then no parameter."""
        return any(self._is_latent_source(n) for n in self.latent_origin(sampler_id))

    def sampler_parts(self, sampler_id: str) -> dict[str, list[tuple[str, str]]]:
        """The (node, input) holding each sampling setting of one sampler, following linked noise/guider/sigmas."""
        parts: dict[str, list[tuple[str, str]]] = {"seed": [], "steps": [], "cfg": [], "denoise": []}
        holders = [sampler_id]
        for linked in ("noise", "guider", "sigmas"):
            source = self.upstream(sampler_id, linked)
            if source is not None:
                holders.append(source[0])
        for holder in holders:
            inputs = self.node(holder)["inputs"]
            for name in known.SEED_INPUTS:
                if name in inputs:
                    parts["seed"].append((holder, name))
            for name in ("steps", "cfg", "denoise"):
                if name in inputs:
                    parts[name].append((holder, name))
        return parts

    def sampler_conditioning(self, sampler_id: str) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        positive = self.upstream(sampler_id, "positive")
        negative = self.upstream(sampler_id, "negative")
        guider = self.upstream(sampler_id, "guider")
        if guider is not None:
            guider_id = guider[0]
            positive = self.upstream(guider_id, "positive") or self.upstream(guider_id, "conditioning") or positive
            negative = self.upstream(guider_id, "negative") or negative
        return positive, negative

    def find_sampling(self) -> None:
        samplers = self.samplers()
        if not samplers:
            return
        first_pass = [s for s in samplers if self.is_first_pass(s)] or samplers[:1]
        parts = {s: self.sampler_parts(s) for s in samplers}
        for sampler in samplers:
            for node_id, input_name in parts[sampler]["seed"]:
                self.add_literal("seed", node_id, input_name)
        setting: ParameterName
        for setting in ("steps", "cfg"):
            self._map_sampler_setting(setting, samplers, first_pass, parts)
        for sampler in first_pass:
            if not self.starts_from_noise(sampler):  # image to image: how much of the input is repainted
                for node_id, input_name in parts[sampler]["denoise"]:
                    self.add_literal("denoise", node_id, input_name)
        self._trace_conditioning(samplers)

    def _map_sampler_setting(
        self,
        setting: ParameterName,
        samplers: list[str],
        first_pass: list[str],
        parts: dict[str, dict[str, list[tuple[str, str]]]],
    ) -> None:
        """`steps`/`cfg`: every sampler when they agree, else the first pass only (with a warning)."""
        everywhere = [slot for s in samplers for slot in parts[s][setting]]
        values = {repr(self.node(n)["inputs"].get(i)) for n, i in everywhere}
        chosen = everywhere if len(values) == 1 else [slot for s in first_pass for slot in parts[s][setting]]
        if len(values) > 1 and len(samplers) > 1:
            self.warnings.append(
                f"the samplers use different {setting}; `{setting}` was mapped to the first pass only "
                f"({', '.join(describe_node(self.workflow, s) for s in first_pass)}); correct the map if needed"
            )
        for node_id, input_name in chosen:
            self.add_literal(setting, node_id, input_name)

    def _trace_conditioning(self, samplers: list[str]) -> None:
        for sampler in samplers:
            positive, negative = self.sampler_conditioning(sampler)
            self.trace_text("prompt", positive)
            self.trace_text("negative_prompt", negative)
        if "prompt" not in self.slots and any(
            "positive" in self.node(s)["inputs"] or "guider" in self.node(s)["inputs"] for s in samplers
        ):
            self.warnings.append(
                "no text encoder was found behind the sampler's positive conditioning; map `prompt` to the input "
                "that takes the prompt text"
            )

    # -- size, batch, input image ---------------------------------------------------------------------

    def find_size(self) -> None:
        ordered = node_ids_in_order(self.workflow)
        sources = [n for n in ordered if self._is_latent_source(n)]
        if not sources:
            sources = [n for n in ordered if self.class_of(n) in known.IMAGE_SOURCES]
        sizes = set()
        for node_id in sources:
            inputs = self.node(node_id)["inputs"]
            sizes.add((repr(inputs.get("width")), repr(inputs.get("height"))))
            for name in ("width", "height"):
                self.add_literal(name, node_id, name)
            self.add_literal("batch_size", node_id, "batch_size")
        if len(sizes) > 1:
            self.warnings.append(
                "the workflow starts from several latents of different sizes; `width`/`height` now set all of them"
            )
        if sources:
            for node_id in ordered:
                for input_name, parameter in known.SIZE_COMPANIONS.get(self.class_of(node_id), {}).items():
                    self.add_literal(parameter, node_id, input_name)
        for node_id in ordered:
            amount = known.BATCH_REPEATERS.get(self.class_of(node_id))
            if amount and "batch_size" not in self.slots:
                self.add_literal("batch_size", node_id, amount)

    def _is_latent_source(self, node_id: str) -> bool:
        class_type = self.class_of(node_id)
        inputs = self.node(node_id)["inputs"]
        if class_type in known.LATENT_SOURCES:
            return True
        # Latent makers of custom packs usually follow the stock naming (Empty...Latent...).
        return class_type.startswith("Empty") and "Latent" in class_type and "width" in inputs and "height" in inputs

    def find_input_image(self) -> None:
        loaders = [n for n in node_ids_in_order(self.workflow) if self.class_of(n) in known.IMAGE_LOADERS]
        for node_id in loaders[:1]:
            self.add_literal("input_image", node_id, known.IMAGE_LOADERS[self.class_of(node_id)])
        if len(loaders) > 1:
            others = ", ".join(describe_node(self.workflow, n) for n in loaders[1:])
            self.warnings.append(
                f"the workflow loads {len(loaders)} images; `input_image` goes to "
                f"{describe_node(self.workflow, loaders[0])}, the others ({others}) keep their file names"
            )


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, kind)


def propose_map(workflow: Workflow) -> tuple[ParameterMap, list[str]]:
    """The proposed parameter map and the warnings about what could not be detected."""
    finder = _Finder(workflow)
    finder.find_sampling()
    finder.find_size()
    finder.find_input_image()
    ordered = {name: finder.slots[name] for name in PARAMETER_ORDER if finder.slots.get(name)}
    return ParameterMap(slots=ordered), finder.warnings


def explain(workflow: Workflow, parameter_map: ParameterMap) -> list[str]:
    """One line per slot, e.g. "prompt: node 6 (CLIPTextEncode) input `text`"."""
    return [
        f"{name}: {describe_node(workflow, slot.node_id)} input `{slot.input_name}`"
        for name, slots in parameter_map.slots.items()
        for slot in slots
    ]


def propose_defaults(workflow: Workflow, parameter_map: ParameterMap, warnings: list[str]) -> RenderDefaults:
    """Defaults taken from the values the workflow was exported with, made to fit the usual limits."""
    limits = RenderLimits()
    defaults = RenderDefaults()
    values: dict[ParameterName, Any] = {}
    for name, slots in parameter_map.slots.items():
        if slots:
            values[name] = workflow[slots[0].node_id]["inputs"][slots[0].input_name]
    for name in ("width", "height"):
        if name in values:
            value = int(values[name])
            fitted = min(
                max(round(value / limits.size_multiple) * limits.size_multiple, limits.min_size), limits.max_size
            )
            if fitted != value:
                warnings.append(
                    f"the workflow's {name} {value} is not a multiple of {limits.size_multiple} within "
                    f"{limits.min_size}..{limits.max_size}; the proposed default is {fitted}"
                )
            setattr(defaults, name, fitted)
    bounds: dict[ParameterName, tuple[float, float]] = {
        "steps": (1, limits.max_steps),
        "cfg": (0.0, COMFY_MAX_CFG),
        "batch_size": (1, limits.max_batch_size),
        "denoise": (0.0, 1.0),
    }
    for name, (low, high) in bounds.items():
        if name in values:
            value = values[name]
            fitted = min(max(value, low), high)
            if fitted != value:
                warnings.append(f"the workflow's {name} {value} is outside {low}..{high}; proposed default: {fitted}")
            setattr(defaults, name, type(low)(fitted))
    if "negative_prompt" in values:
        defaults.negative_prompt = str(values["negative_prompt"])
    return defaults


def analyze(workflow: Workflow, parameter_map: ParameterMap | None = None) -> WorkflowAnalysis:
    """Everything the import form shows: proposed map and defaults, requirements, output kind, warnings."""
    proposed, warnings = propose_map(workflow)
    chosen = parameter_map if parameter_map is not None else proposed
    requirements = _requirements(workflow, warnings)
    output_kind = output_kind_of(workflow, warnings)
    for node in uncollectable_outputs(workflow):
        warnings.append(f"{node}: the hub stores nothing from it, so it is not part of a job's result")
    if not proposed.slots:
        warnings.append("no parameter slot was detected: requests cannot change anything in this workflow yet")
    candidates = [] if chosen.slots.get("prompt") else prompt_candidates(workflow, chosen)
    return WorkflowAnalysis(
        workflow=workflow,
        proposed_map=chosen,
        proposed_defaults=propose_defaults(workflow, chosen, warnings),
        requirements=requirements,
        output_kind=output_kind,
        warnings=_unique(warnings),
        explanations=explain(workflow, chosen),
        prompt_candidates=candidates,
        notes=prompt_notes(workflow, chosen, candidates),
    )


TEXT_PRIMITIVES = ("PrimitiveString", "PrimitiveStringMultiline")


def prompt_candidates(workflow: Workflow, parameter_map: ParameterMap) -> list[Slot]:
    """Literal text inputs that could hold a prompt: the value of a string primitive, or an input named like one
    (`text`, `prompt`), not already mapped and not a model file name."""
    taken = {(s.node_id, s.input_name) for slots in parameter_map.slots.values() for s in slots}
    found: list[Slot] = []
    for node_id in node_ids_in_order(workflow):
        node = workflow[node_id]
        for input_name, value in node["inputs"].items():
            if not isinstance(value, str) or (node_id, input_name) in taken:
                continue
            if value.lower().endswith(known.MODEL_FILE_SUFFIXES):
                continue
            if node["class_type"] in TEXT_PRIMITIVES or input_name in known.GENERIC_TEXT_INPUTS:
                found.append(Slot(node_id=node_id, input_name=input_name))
    return found


def prompt_notes(workflow: Workflow, parameter_map: ParameterMap, candidates: list[Slot]) -> list[str]:
    if parameter_map.slots.get("prompt"):
        return []
    if not candidates:
        return [
            "no prompt slot: no text encoder and no text input was found, so this render type takes no prompt "
            "(requests may leave it out; one they send is reported as ignored)"
        ]
    where = ", ".join(f"{describe_node(workflow, c.node_id)} input `{c.input_name}`" for c in candidates)
    return [
        f"no text encoder was found; text inputs that could take the prompt: {where}. Map `prompt` to one of "
        "them (e.g. `prompt: node_id/input_name`), or leave it: requests then take no prompt"
    ]


def _unique(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def analyze_json(workflow_json: str, parameter_map: ParameterMap | None = None) -> WorkflowAnalysis:
    """The import analysis of an admin's exported JSON: rejected with a clear message unless it is a runnable
    API-format workflow (and, when given, a map that fits it)."""
    workflow = parse_workflow_json(workflow_json)
    check_workflow(workflow, field="workflow_json")
    if parameter_map is not None:
        check_map(workflow, parameter_map, "parameter_map")
    return analyze(workflow, parameter_map)
