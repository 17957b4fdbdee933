"""prompt-service: styles, prompt building, LLM settings.

How a prompt is built (`BuildPrompt`, answered on `Prompt.BUILD` and `Prompt.PREVIEW`):
1. the user's prompt is rewritten by the LLM when `enhance` is true (on any LLM failure the prompt is used
   as typed and `enhancement_error` says why: enhancement never fails a build);
2. the styles apply in the order requested (`styles=None`: the enabled default styles that suit the render
   type, by `sort_order` then name), each positive template wrapping the result of the previous one at its
   `{prompt}` slot, or appending its text after ", " when it has no slot;
3. the user's negative prompt comes first, then each style's negative in the same order (a negative with a
   `{prompt}` slot wraps the negative so far);
4. a fragment (text between commas) a style adds that is already present is dropped; the user's own words
   are never dropped.
Style names match case-insensitively. An unknown style is a `not_found` error, a disabled one an
`invalid_request` error, one made for other render types an `incompatible` error; each lists the usable
styles in `details.valid`. The full rules: prompt-service/README.md.
"""

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


BulkStyleAction = Literal["enable", "disable", "delete", "set_category"]


class BulkStyles(Request):
    """One change to many styles at once, all or nothing (the admin UI's bulk actions)."""

    names: Annotated[list[StyleName], msgspec.Meta(min_length=1, max_length=10_000)]
    action: BulkStyleAction
    category: str = ""  # for set_category ("" clears it)


class BulkResult(Record):
    action: BulkStyleAction
    changed: list[str]  # the styles' stored names


StyleFormat = Literal["fooocus_json", "a1111_csv"]


class ImportStyles(Request):
    format: StyleFormat
    content: Annotated[str, msgspec.Meta(max_length=10_000_000)]
    # A style whose name exists already (case-insensitive) is left alone ("skip") or gets the file's
    # prompts ("update"; its category, render types, default flag, order and enabled flag are kept).
    on_conflict: Literal["skip", "update"] = "skip"
    category: str = ""  # category of the styles the file adds (and of those it updates, when not empty)
    dry_run: bool = False  # report what the import would do without writing anything


class SkippedStyle(Record):
    name: str
    reason: str


ImportAction = Literal["add", "update", "skip", "separator"]


class ImportRow(Record):
    """What the import does (or, in a dry run, would do) with one row or entry of the file."""

    where: str  # "line 7" (A1111 CSV), "entry 3" (Fooocus JSON)
    name: str
    action: ImportAction
    reason: str = ""  # why it is skipped; for a separator, the category it gives the rows below
    category: str = ""  # the category the style gets


class ImportReport(Record):
    added: list[str] = []
    updated: list[str] = []
    skipped: list[SkippedStyle] = []
    dry_run: bool = False
    rows: list[ImportRow] = []  # every row of the file in order, separators and skipped ones included
    separators: int = 0  # A1111 section rows (a name, no prompt): categories, not styles


class ExportStyles(Request):
    format: StyleFormat
    names: list[str] | None = None  # None: every style


class StyleExport(Record):
    format: StyleFormat
    filename: str
    content: str
    count: int = 0  # styles in the file


class BuildPrompt(Request):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    negative_prompt: Annotated[str, msgspec.Meta(max_length=8000)] = ""
    styles: list[str] | None = None  # None: the default styles; []: no style at all
    # The render type's name; None: the default render type, which the prompt service does not know, so a
    # style restricted to some render types is applied unchecked when named and left out when a default.
    render_type: str | None = None
    enhance: bool = False
    # The longest the caller lets the LLM take (a caller that waits longer than HUB_REQUEST_TIMEOUT_S for the
    # reply); None: the LLM settings' timeout, capped so that the reply arrives within HUB_REQUEST_TIMEOUT_S.
    enhance_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] | None = None


class TraceStep(Record):
    # "enhance", "enhance_skipped", "default_styles", "style", "style_unchecked", "style_skipped", "dedupe"
    step: str
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
    user_prompt: str = ""  # the prompt as the user typed it
    enhanced_prompt: str = ""  # the LLM's rewrite of it ("" when not enhanced), before the styles
    llm_model: str = ""  # the model that rewrote it
    render_type: str | None = None  # as requested


LlmProvider = Literal["ollama", "openai"]


class LlmSettings(Record):
    provider: LlmProvider = "ollama"
    base_url: str = "http://127.0.0.1:11434"
    model: str = ""
    system_prompt: str = ""
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 20.0
    keep_alive: str = "5m"  # Ollama only: how long the model stays loaded ("5m", "1h", "0", "-1": forever)
    # OpenAI-compatible servers only; never logged, never returned in full. On save: None or the masked
    # value read back keeps the stored key, "" clears it, anything else replaces it.
    api_key: str | None = None
    # Filled in by GET, ignored by SAVE: whether a key is stored, and the system prompt used when
    # `system_prompt` is empty.
    api_key_set: bool = False
    default_system_prompt: str = ""


class GetLlmSettings(Request):
    pass


class SaveLlmSettings(Request):
    settings: LlmSettings


class ListLlmModels(Request):
    # Settings to try before saving them (the UI's "list models" button); None: the stored settings.
    settings: LlmSettings | None = None


class LlmModels(Record):
    models: list[str]
    provider: LlmProvider = "ollama"
    base_url: str = ""


class TryEnhancement(Request):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    settings: LlmSettings | None = None  # settings to try before saving them; None: the stored settings


class EnhanceResult(Record):
    original: str
    enhanced: str  # the cleaned rewrite, or the original when `ok` is false
    ok: bool
    error: str | None = None
    elapsed_ms: float = 0.0
    model: str = ""
    raw: str = ""  # the LLM's answer as it came (what was cleaned or rejected)
