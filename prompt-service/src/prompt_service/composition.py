"""Which styles a build uses, and how they turn a prompt into the final positive and negative prompts.

Pure functions (no database, no network), so the rules below are the whole story:

Selection
- `styles=None` means "the default styles": every enabled style with `is_default`, in `sort_order` then name
  order, that suits the render type. A default style restricted to other render types is left out (a
  "style_skipped" trace step says so); when the request names no render type (None: the default render type,
  which this service does not know), a default style restricted to some render types is left out too, since
  it cannot be shown to suit.
- `styles=[]` means no style at all.
- Named styles match case-insensitively and apply in the order named; a name given twice applies once.
  An unknown name is a `not_found` error, a disabled style an `invalid_request` error, a style restricted to
  other render types an `incompatible` error; each names the culprits and lists the styles that would work
  (`details.valid`). A named style restricted to some render types, in a request that names no render
  type, is applied unchecked (the caller chose it; a "style_unchecked" trace step says so).

Composition (after the LLM rewrite, which changes the user's prompt before any style sees it)
1. The user's prompt is the innermost text.
2. Styles apply in order: each positive template wraps the result so far at its `{prompt}` slot (every slot
   is replaced), or, without a slot, its text is appended after ", ". Styles [a, b] give b(a(prompt)).
3. The negative starts with the user's negative prompt; each style's negative follows in the same order,
   appended after ", " (or wrapping the negative so far when it has a `{prompt}` slot).
4. A fragment (text between commas or line breaks) that a style brings in and that is already present, in
   the user's text or earlier, is dropped, compared case-insensitively and ignoring spacing. The user's own
   words are never dropped, and neither is a fragment glued to the slot ("photo of " in
   "photo of {prompt}"), which is part of a phrase.
5. Spacing is tidied: runs of spaces become one, empty fragments (", ,") disappear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from contracts.errors import ErrorCode, HubError
from contracts.messages.styles import Style, TraceStep

SLOT = "{prompt}"
_SLOT_LOOKALIKE = re.compile(r"\{\s*prompt\s*\}", re.IGNORECASE)
_SEPARATOR = re.compile(r"([,\n])")
_NAMES_IN_MESSAGE = 20  # a message lists this many names at most; `details` has them all


@dataclass
class Selection:
    styles: list[Style]
    trace: list[TraceStep] = field(default_factory=list)


@dataclass
class Composed:
    positive: str
    negative: str
    trace: list[TraceStep] = field(default_factory=list)


def name_key(name: str) -> str:
    """The case-insensitive identity of a style name."""
    return " ".join(name.split()).casefold()


def misspelt_slot(template: str) -> str | None:
    """A slot written almost right ("{Prompt}", "{ prompt }"), which would stay in the prompt as text."""
    return next((m for m in _SLOT_LOOKALIKE.findall(template) if m != SLOT), None)


def suits(style: Style, render_type: str) -> bool:
    return not style.render_types or name_key(render_type) in {name_key(t) for t in style.render_types}


def listing_order(style: Style) -> tuple[int, str]:
    return (style.sort_order, name_key(style.name))


def name_list(names: list[str]) -> str:
    """Names for a message: quoted, comma-separated, cut short when there are many."""
    shown = ", ".join(f"'{n}'" for n in names[:_NAMES_IN_MESSAGE])
    if len(names) > _NAMES_IN_MESSAGE:
        shown += f" and {len(names) - _NAMES_IN_MESSAGE} more (see details.valid)"
    return shown or "(none)"


def unknown_styles(unknown: list[str], field: str, hint: str, **details: object) -> HubError:
    """NOT_FOUND naming the styles that do not exist; `hint` tells the caller what to do (or what was not done)."""
    return HubError(
        ErrorCode.NOT_FOUND,
        f"unknown style{'s' if len(unknown) > 1 else ''} {name_list(unknown)}; {hint}",
        field=field,
        details={"unknown": unknown, **details},
    )


def select_styles(requested: list[str] | None, library: list[Style], render_type: str | None) -> Selection:
    """The styles a build applies, in order, or a `HubError` naming every style that cannot be used."""
    ordered = sorted(library, key=listing_order)
    if requested is None:
        return _default_styles(ordered, render_type)
    if not requested:
        return Selection([], [TraceStep(step="default_styles", detail="no style asked for ([]): none applied")])
    sorting = _Sorting()
    by_key = {name_key(s.name): s for s in ordered}
    for name in requested:
        sorting.take(name, by_key.get(name_key(name)), render_type)
    valid = [s.name for s in ordered if s.enabled and (render_type is None or suits(s, render_type))]
    sorting.refuse_the_unusable(render_type, valid)
    return Selection(sorting.chosen, sorting.trace)


@dataclass
class _Sorting:
    """The requested styles sorted into those applied and those that cannot be (each kind its own error)."""

    chosen: list[Style] = field(default_factory=list)
    trace: list[TraceStep] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    incompatible: dict[str, list[str]] = field(default_factory=dict)

    def take(self, name: str, style: Style | None, render_type: str | None) -> None:
        if style is None:
            self.unknown.append(name)
        elif any(s is style for s in self.chosen):
            detail = "named more than once: applied once"
            self.trace.append(TraceStep(step="style_skipped", detail=detail, style=style.name))
        elif not style.enabled:
            self.disabled.append(style.name)
        elif render_type is not None and not suits(style, render_type):
            self.incompatible[style.name] = list(style.render_types)
        else:
            self.chosen.append(style)
            if render_type is None and style.render_types:
                detail = (
                    f"made for {', '.join(style.render_types)}; the request named no render type, "
                    "so it was applied without checking"
                )
                self.trace.append(TraceStep(step="style_unchecked", detail=detail, style=style.name))

    def refuse_the_unusable(self, render_type: str | None, valid: list[str]) -> None:
        unknown, disabled, incompatible = self.unknown, self.disabled, self.incompatible
        if unknown:
            raise unknown_styles(unknown, "styles", f"valid styles: {name_list(valid)}", valid=valid)
        if disabled:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"style{'s' if len(disabled) > 1 else ''} {name_list(disabled)} "
                f"{'are' if len(disabled) > 1 else 'is'} disabled; enable it in the styles admin or choose one of: "
                f"{name_list(valid)}",
                field="styles",
                details={"disabled": disabled, "valid": valid},
            )
        if incompatible:
            reasons = "; ".join(f"'{n}' is for {', '.join(types)}" for n, types in incompatible.items())
            raise HubError(
                ErrorCode.INCOMPATIBLE,
                f"{reasons}, not for render type '{render_type}'; styles that suit '{render_type}': {name_list(valid)}",
                field="styles",
                details={"incompatible": incompatible, "render_type": render_type, "valid": valid},
            )


def _default_styles(ordered: list[Style], render_type: str | None) -> Selection:
    chosen: list[Style] = []
    trace: list[TraceStep] = []
    for style in ordered:
        if not (style.is_default and style.enabled):
            continue
        if render_type is None and style.render_types:
            why = f"made for {', '.join(style.render_types)} and the request named no render type"
        elif render_type is not None and not suits(style, render_type):
            why = f"made for {', '.join(style.render_types)}, not for '{render_type}'"
        else:
            chosen.append(style)
            continue
        trace.append(TraceStep(step="style_skipped", detail=f"default style left out: {why}", style=style.name))
    names = ", ".join(s.name for s in chosen)
    detail = f"no style named: the default styles apply ({names})" if chosen else "no style named and no default"
    return Selection(chosen, [TraceStep(step="default_styles", detail=detail), *trace])


# -- composition ------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    """A piece of the text being built: the user's own words (`source` None) or a style's."""

    text: str
    source: str | None = None
    glued_start: bool = False  # its first fragment continues the text before it (it follows a slot)
    glued_end: bool = False  # its last fragment runs into the text after it (it precedes a slot)


def _apply(segments: list[_Segment], template: str, source: str) -> tuple[list[_Segment], str]:
    """The segments wrapped by (or followed by) a style's template, and how it was applied."""
    if SLOT in template:
        parts = template.split(SLOT)
        result: list[_Segment] = []
        for index, part in enumerate(parts):
            if part:
                result.append(_Segment(part, source, glued_start=index > 0, glued_end=index < len(parts) - 1))
            if index < len(parts) - 1:
                result.extend(_Segment(s.text, s.source, s.glued_start, s.glued_end) for s in segments)
        return result, "wrapped"
    if not template.strip():
        return segments, "unchanged"
    return [*segments, _Segment(", " + template.strip(), source)], "appended"


def _fragment_key(fragment: str) -> str:
    return " ".join(fragment.split()).strip(".;").strip().casefold()


def _dedupe(segments: list[_Segment]) -> dict[str, list[str]]:
    """Drop style fragments already present; returns what was dropped, by style."""
    seen = {
        _fragment_key(piece)
        for segment in segments
        if segment.source is None
        for piece in _SEPARATOR.split(segment.text)[::2]
    }
    dropped: dict[str, list[str]] = {}
    for segment in segments:
        if segment.source is None:
            continue
        pieces = _SEPARATOR.split(segment.text)
        last = len(pieces) - 1
        for index in range(0, len(pieces), 2):
            key = _fragment_key(pieces[index])
            glued = (index == 0 and segment.glued_start) or (index == last and segment.glued_end)
            if not key or glued:
                continue
            if key in seen:
                dropped.setdefault(segment.source, []).append(pieces[index].strip())
                pieces[index] = ""
            else:
                seen.add(key)
        segment.text = "".join(pieces)
    return dropped


def tidy(text: str) -> str:
    """One space between words, no empty fragments, no separators at the ends; line breaks are kept."""
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        fragments = [" ".join(f.split()) for f in line.split(",")]
        joined = ", ".join(f for f in fragments if f)
        if joined:
            lines.append(joined)
    return "\n".join(lines)


def _build(user_text: str, templates: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]], dict[str, list[str]]]:
    segments = [_Segment(user_text)] if user_text.strip() else []
    how: list[tuple[str, str]] = []
    for source, template in templates:
        segments, applied = _apply(segments, template, source)
        how.append((source, applied))
    dropped = _dedupe(segments)
    return tidy("".join(s.text for s in segments)), how, dropped


def compose(prompt: str, negative_prompt: str, styles: list[Style]) -> Composed:
    """The final prompts: `styles` applied in order to the user's prompt and negative prompt."""
    positive, positive_how, positive_dropped = _build(prompt, [(s.name, s.positive) for s in styles])
    negative, negative_how, negative_dropped = _build(negative_prompt, [(s.name, s.negative) for s in styles])
    trace: list[TraceStep] = []
    for (name, on_positive), (_, on_negative) in zip(positive_how, negative_how, strict=True):
        positive_detail = {
            "wrapped": "its template wraps the prompt",
            "appended": "its text is appended to the prompt",
            "unchanged": "the prompt is unchanged",
        }[on_positive]
        negative_detail = {
            "wrapped": "its negative wraps the negative prompt",
            "appended": "its negative is appended",
            "unchanged": "no negative",
        }[on_negative]
        trace.append(TraceStep(step="style", detail=f"{positive_detail}; {negative_detail}", style=name))
    for which, dropped in (("prompt", positive_dropped), ("negative prompt", negative_dropped)):
        for name, fragments in dropped.items():
            quoted = ", ".join(f"'{f}'" for f in fragments)
            trace.append(
                TraceStep(step="dedupe", detail=f"left out of the {which}, already present: {quoted}", style=name)
            )
    return Composed(positive=positive, negative=negative, trace=trace)
