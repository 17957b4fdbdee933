"""Style libraries in the formats people already have: reading and writing them (pure functions).

- Fooocus (`sdxl_styles/*.json`): a JSON list of `{"name", "prompt", "negative_prompt"}`; `prompt` holds the
  `{prompt}` slot; either prompt may be missing. Other keys are ignored, as Fooocus does.
- AUTOMATIC1111 (`styles.csv`): CSV with a header row naming `name`, `prompt` (or the older `text`) and
  optionally `negative_prompt`; fields may be quoted and span lines; a UTF-8 byte order mark is allowed;
  rows whose name starts with `#` are comments and blank rows are ignored, as A1111 does.

A file that cannot be read as a whole is an `invalid_request` error naming the entry or line at fault, so
that nothing of it is imported.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
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
                "negative": (negative or "").strip(),
                "category": category,
            },
            Style,
        )
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$.positive`", "`prompt`").replace("`$.negative`", "`negative_prompt`")
        raise _invalid(f"{label}: {text.replace('`$.name`', '`name`')}", where=where) from None


def parse(format: StyleFormat, content: str, category: str = "") -> list[Entry]:
    entries = parse_fooocus_json(content, category) if format == "fooocus_json" else parse_a1111_csv(content, category)
    if not entries:
        raise _invalid(f"the file holds no styles; expected {_describe(format)}")
    return entries


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


def parse_a1111_csv(content: str, category: str = "") -> list[Entry]:
    reader = csv.reader(io.StringIO(content.lstrip("\ufeff"), newline=""), skipinitialspace=True, strict=True)
    header: list[str] | None = None
    columns: dict[str, int] = {}
    entries: list[Entry] = []
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _invalid(
                f"the CSV cannot be read from line {first_line} on: {exc} (is a quote left open?)", line=first_line
            ) from None
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            columns = _csv_columns(header)
            continue
        where = f"line {first_line}"
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
            raise _invalid(
                f"{where} has {len(row)} fields but the header names {len(header)} columns; "
                "put a field that contains a comma in double quotes",
                where=where,
                line=first_line,
            )
        cells = row + [""] * (len(header) - len(row))
        name = cells[columns["name"]]
        if name.strip().startswith("#"):  # A1111 treats these rows as comments
            continue
        negative = cells[columns["negative_prompt"]] if "negative_prompt" in columns else ""
        entries.append(Entry(where, _style(where, name, cells[columns["prompt"]], negative, category)))
    if header is None:
        raise _invalid(f"the CSV file is empty; expected {_describe('a1111_csv')}")
    return entries


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
