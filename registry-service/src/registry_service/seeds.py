"""The render types the hub ships with: JSON workflows and a manifest in the `seed/` folder beside this module.

They are stored on the registry's first start only (while it has never held any), so an admin can edit or
delete them and they do not come back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from contracts.messages.render_types import OutputKind, ParameterMap, RenderDefaults, RenderLimits, RenderType
from registry_service.analysis import analyze
from registry_service.workflow import check_workflow, parse_workflow_json

SEED_DIR = Path(__file__).resolve().parent / "seed"


class SeedEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str
    workflow: str  # file name in the seed folder
    output_kind: OutputKind | None = None  # None: detected from the workflow's output nodes
    is_default: bool = False
    enabled: bool = True
    defaults: dict[str, Any] = {}  # over the values detected in the workflow
    limits: dict[str, Any] = {}
    parameter_map: ParameterMap | None = None  # None: the detected map


class SeedManifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    about: str = ""
    render_types: list[SeedEntry]


def load_seed_render_types(folder: Path = SEED_DIR) -> list[RenderType]:
    """The shipped render types, each checked like an admin's import (a broken file fails loudly)."""
    manifest = msgspec.json.decode((folder / "manifest.json").read_bytes(), type=SeedManifest)
    render_types = []
    for entry in manifest.render_types:
        workflow = parse_workflow_json((folder / entry.workflow).read_text(encoding="utf-8"), field=entry.workflow)
        check_workflow(workflow, field=entry.workflow)
        analysis = analyze(workflow, entry.parameter_map)
        defaults = msgspec.convert(
            {**msgspec.to_builtins(analysis.proposed_defaults), **entry.defaults}, type=RenderDefaults
        )
        render_types.append(
            RenderType(
                name=entry.name,
                description=entry.description,
                workflow=workflow,
                parameter_map=analysis.proposed_map,
                defaults=defaults,
                limits=msgspec.convert(entry.limits, type=RenderLimits),
                output_kind=entry.output_kind or analysis.output_kind,
                enabled=entry.enabled,
                is_default=entry.is_default,
            )
        )
    return render_types
