"""prompt-service: styles, prompt building, LLM settings."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from contracts.messages.base import Record, Request

StyleName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=80,
        pattern=r"^[^\x00-\x1f]+$",
        description="Style name, unique, case-insensitive (e.g. 'cinematic').",
    ),
]


class Style(Record):
    name: StyleName
    positive: Annotated[
        str,
        msgspec.Meta(max_length=4000, description="Template with a {prompt} slot, or a fragment appended."),
    ] = "{prompt}"
    negative: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    category: str = ""
    render_types: list[str] = []  # empty: suits every render type
    is_default: bool = False
    enabled: bool = True
    sort_order: int = 0
    description: str = ""


class StyleList(Record):
    styles: list[Style]


class ListStyles(Request):
    category: str | None = None
    render_type: str | None = None  # only styles suited to this render type
    include_disabled: bool = True


class GetStyle(Request):
    name: StyleName


class SaveStyle(Request):
    style: Style
    # Rename support: the name the style had before this edit; None creates a new style.
    original_name: str | None = None


class DeleteStyle(Request):
    name: StyleName


StyleFormat = Literal["fooocus_json", "a1111_csv"]


class ImportStyles(Request):
    format: StyleFormat
    content: Annotated[str, msgspec.Meta(max_length=10_000_000)]
    on_conflict: Literal["skip", "update"] = "skip"
    category: str = ""


class SkippedStyle(Record):
    name: str
    reason: str


class ImportReport(Record):
    added: list[str] = []
    updated: list[str] = []
    skipped: list[SkippedStyle] = []


class ExportStyles(Request):
    format: StyleFormat
    names: list[str] | None = None  # None: every style


class StyleExport(Record):
    format: StyleFormat
    filename: str
    content: str


class BuildPrompt(Request):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    negative_prompt: Annotated[str, msgspec.Meta(max_length=8000)] = ""
    styles: list[str] | None = None  # None: the default styles; []: no style at all
    render_type: str | None = None
    enhance: bool = False


class TraceStep(Record):
    step: str  # "style", "default_styles", "dedupe", "enhance", "enhance_skipped"
    detail: str
    style: str | None = None


class BuiltPrompt(Record):
    positive: str
    negative: str
    styles_applied: list[str]
    enhanced: bool
    trace: list[TraceStep] = []
    # Set when enhancement was asked for but could not be done: the prompt is then un-enhanced.
    enhancement_error: str | None = None


LlmProvider = Literal["ollama", "openai"]


class LlmSettings(Record):
    provider: LlmProvider = "ollama"
    base_url: str = "http://127.0.0.1:11434"
    model: str = ""
    system_prompt: str = ""
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 20.0
    keep_alive: str = "5m"
    api_key: str | None = None  # OpenAI-compatible servers only; never logged, never returned in full


class GetLlmSettings(Request):
    pass


class SaveLlmSettings(Request):
    settings: LlmSettings


class ListLlmModels(Request):
    pass


class LlmModels(Record):
    models: list[str]


class TestEnhance(Request):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]


class EnhanceResult(Record):
    original: str
    enhanced: str
    ok: bool
    error: str | None = None
    elapsed_ms: float = 0.0
