"""Style libraries in the formats people already have: reading and writing them (pure functions).

- Fooocus (`sdxl_styles/*.json`): a JSON list of `{"name", "prompt", "negative_prompt"}`; `prompt` holds the
  `{prompt}` slot; either prompt may be missing. Other keys are ignored, as Fooocus does.
- AUTOMATIC1111 (`styles.csv`): CSV with a header row naming `name`, `prompt` (or the older `text`) and
  optionally `negative_prompt`, read as leniently as A1111 reads it (Python's `csv` with its defaults and
  `skipinitialspace`: a stray quote inside a field is kept as text); a UTF-8 byte order mark is allowed;
  rows whose name starts with `#` are comments and blank rows are ignored, as A1111 does. A row with a name
  but neither prompt nor negative prompt is a section separator (`>>>>>> Generic Styles`): not a style, its
  name (without the decoration) becomes the category of the rows below it. A row that cannot be a style
  (no name, fields beyond the header's, a misspelt slot, a quote left open to the end of the file) is
  skipped and reported with its line and reason; the other rows are still read.

A Fooocus file, or a CSV whose header is unusable, that cannot be read is an `invalid_request` error naming
the entry or line at fault, so that nothing of it is imported.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.styles import Style, StyleFormat
from prompt_service.composition import SLOT, misspelt_slot

FILENAMES: dict[str, str] = {"fooocus_json": "sdxl_styles_genimage_hub.json", "a1111_csv": "styles.csv"}
_CSV_COLUMNS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Entry:
    """One style read from a file, and where it was ("entry 3", "line 7") for messages."""

    where: str
    style: Style


@dataclass(frozen=True)
class Refused:
    """A row of the file that is not imported, where it was, and why."""

    where: str
    name: str
    reason: str


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    separators: list[Refused] = field(default_factory=list)  # section rows; `reason` names the category


def _invalid(message: str, **details: object) -> HubError:
    return HubError(ErrorCode.INVALID_REQUEST, message, field="content", details=details or None)


def _style(where: str, name: object, positive: object, negative: object, category: str) -> Style:
    """A style from a file's fields, checked against the contract's limits, with errors naming `where`."""
    if not isinstance(name, str) or not name.strip():
        raise _invalid(f"{where} has no name; every style needs a non-empty `name`", where=where)
    label = f"{where} ('{name.strip()[:80]}')"
    for key, value in (("prompt", positive), ("negative_prompt", negative)):
        if value is not None and not isinstance(value, str):
            raise _invalid(f"{label}: `{key}` must be a string, not {type(value).__name__}", where=where)
        odd = misspelt_slot(value or "")
        if odd:
            raise _invalid(f"{label}: `{key}` contains {odd!r}; write the slot exactly as {SLOT}", where=where)
    try:
        return msgspec.convert(
            {
                "name": " ".join(name.split()),
                "positive": positive.strip() if isinstance(positive, str) and positive.strip() else SLOT,
                "negative": str(negative or "").strip(),  # a string or None: checked above
                "category": category,
            },
            Style,
        )
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$.positive`", "`prompt`").replace("`$.negative`", "`negative_prompt`")
        raise _invalid(f"{label}: {text.replace('`$.name`', '`name`')}", where=where) from None


def parse(format: StyleFormat, content: str, category: str = "") -> Parsed:
    if format == "fooocus_json":
        parsed = Parsed(entries=parse_fooocus_json(content, category))
    else:
        parsed = parse_a1111_csv(content, category)
    if not parsed.entries and not parsed.refused:
        raise _invalid(f"the file holds no styles; expected {_describe(format)}")
    return parsed


def _describe(format: StyleFormat) -> str:
    if format == "fooocus_json":
        return 'a JSON list like [{"name": "...", "prompt": "... {prompt} ...", "negative_prompt": "..."}]'
    return "a CSV file with the header name,prompt,negative_prompt and one style a row"


def parse_fooocus_json(content: str, category: str = "") -> list[Entry]:
    try:
        data: Any = json.loads(content.lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        raise _invalid(
            f"the file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    if not isinstance(data, list):
        raise _invalid(f"expected {_describe('fooocus_json')}, got a JSON {_json_kind(data)}")
    entries = []
    for index, item in enumerate(data, start=1):
        where = f"entry {index}"
        if not isinstance(item, dict):
            raise _invalid(
                f'{where} is a JSON {_json_kind(item)}; each entry must be an object {{"name", "prompt", '
                '"negative_prompt"}',
                where=where,
            )
        style = _style(where, item.get("name"), item.get("prompt"), item.get("negative_prompt"), category)
        entries.append(Entry(where, style))
    return entries


def _json_kind(value: object) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def parse_a1111_csv(content: str, category: str = "") -> Parsed:
    text = content.lstrip("\ufeff")
    # A1111 reads with csv.DictReader(file, skipinitialspace=True): not strict, so odd quoting is kept as text.
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header: list[str] | None = None
    columns: dict[str, int] = {}
    parsed = Parsed()
    section = category
    previous_end = 0
    lines = text.splitlines(keepends=True)
    while (row := next(reader, None)) is not None:
        first_line = previous_end + 1
        previous_end = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            columns = _csv_columns(header)
            continue
        where = f"line {first_line}"
        cells = row + [""] * (len(header) - len(row))
        name = cells[columns["name"]]
        if name.strip().startswith("#"):  # A1111 treats these rows as comments
            continue
        negative = cells[columns["negative_prompt"]] if "negative_prompt" in columns else ""
        if name.strip() and not cells[columns["prompt"]].strip() and not negative.strip():
            section = _section_title(name) or category
            parsed.separators.append(Refused(where, name.strip(), section))
            continue
        problem = _row_problem(where, row, header, lines if previous_end >= len(lines) else None, first_line)
        if problem:
            parsed.refused.append(Refused(where, name.strip(), problem))
            continue
        try:
            parsed.entries.append(Entry(where, _style(where, name, cells[columns["prompt"]], negative, section)))
        except HubError as exc:
            parsed.refused.append(Refused(where, name.strip(), exc.info.message))
    if header is None:
        raise _invalid(f"the CSV file is empty; expected {_describe('a1111_csv')}")
    return parsed


def _section_title(name: str) -> str:
    """'>>>>>> Generic Styles <<<' -> 'Generic Styles': the words of a separator row, without its decoration."""
    return " ".join(name.strip(" \t>*=<-_~|:#[](){}/\\.").split())[:80]


def _row_problem(where: str, row: list[str], header: list[str], lines: list[str] | None, first_line: int) -> str:
    """Why a row read from the CSV cannot be a style as it stands, or "". `lines`: the file's, for its last row."""
    if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
        return (
            f"{where} has {len(row)} fields but the header names {len(header)} columns; "
            "put a field that contains a comma in double quotes"
        )
    if lines is not None and any("\n" in cell for cell in row):  # a quote left open runs to the end of the file
        rest = "".join(lines[first_line - 1 :])
        if rest.count('"') % 2 and not rest.rstrip("\r\n").endswith('"'):
            return f"{where}: a quote opened on this line is never closed, so the rest of the file is one field"
    return ""


def _csv_columns(header: list[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, title in enumerate(header):
        title = "prompt" if title == "text" and "prompt" not in header else title  # A1111's old column name
        if title in columns and title in _CSV_COLUMNS:
            raise _invalid(f"the CSV header names the column `{title}` twice", header=header)
        columns.setdefault(title, index)
    missing = [c for c in ("name", "prompt") if c not in columns]
    if missing:
        raise _invalid(
            f"the CSV header (line 1: {', '.join(header)}) lacks the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; the first row must be name,prompt,negative_prompt",
            missing=missing,
            header=header,
        )
    return columns


def export(format: StyleFormat, styles: list[Style]) -> str:
    if format == "fooocus_json":
        items = [{"name": s.name, "prompt": s.positive, "negative_prompt": s.negative} for s in styles]
        return json.dumps(items, indent=4, ensure_ascii=False) + "\n"
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")  # what A1111 itself writes (csv's default)
    writer.writerow(_CSV_COLUMNS)
    writer.writerows((s.name, s.positive, s.negative) for s in styles)
    return out.getvalue()
