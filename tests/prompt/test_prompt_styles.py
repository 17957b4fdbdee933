"""prompt-service over real NATS: the style library (CRUD, starter set) and its import/export in the Fooocus
JSON and AUTOMATIC1111 CSV formats, where a malformed file imports nothing."""

from __future__ import annotations

import csv
import io
import json

import pytest
from harness import ServiceProcess
from nats.aio.client import Client as NatsClient
from prompt_support import P, build, failure, prompt_fixture, replace_styles, styles

from contracts.errors import ErrorCode
from contracts.messages.styles import (
    BulkStyles,
    DeleteStyle,
    ExportStyles,
    GetStyle,
    ImportReport,
    ImportStyles,
    SaveStyle,
    SkippedStyle,
    Style,
)
from contracts.runtime.bus import call

service = prompt_fixture("prompt-styles")


async def import_file(nc: NatsClient, format: str, content: str, **fields: object) -> ImportReport:
    return await call(nc, P.STYLES_IMPORT, ImportStyles(format=format, content=content, **fields))  # type: ignore[arg-type]


# -- CRUD -------------------------------------------------------------------------------------------------


async def test_a_style_is_created_read_renamed_and_deleted_with_names_unique_regardless_of_case(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [Style(name="other")])
    created = await call(
        nc,
        P.STYLES_SAVE,
        SaveStyle(
            style=Style(
                name="  Neon   Glow ",
                positive="neon {prompt}, glow",
                negative=" dull ",
                category="graphic",
                render_types=["SDXL", "flux", "sdxl"],
                sort_order=3,
                description="bright",
            )
        ),
    )
    assert created.name == "Neon Glow" and created.negative == "dull" and created.render_types == ["sdxl", "flux"]
    assert await call(nc, P.STYLES_GET, GetStyle(name="neon glow")) == created

    clash = await failure(nc, P.STYLES_SAVE, SaveStyle(style=Style(name="NEON GLOW")))
    assert clash.code == ErrorCode.CONFLICT and clash.info.field == "style.name" and "'Neon Glow'" in clash.info.message

    renamed = await call(
        nc,
        P.STYLES_SAVE,
        SaveStyle(style=Style(name="Neon", positive="neon {prompt}"), original_name="NEON glow"),
    )
    assert renamed.name == "Neon"
    assert sorted(s.name for s in await styles(nc)) == ["Neon", "other"]
    # Changing only the case of its own name is an edit, not a clash.
    await call(nc, P.STYLES_SAVE, SaveStyle(style=Style(name="NEON"), original_name="neon"))
    taken = await failure(nc, P.STYLES_SAVE, SaveStyle(style=Style(name="Other"), original_name="neon"))
    assert taken.code == ErrorCode.CONFLICT
    missing = await failure(nc, P.STYLES_SAVE, SaveStyle(style=Style(name="x"), original_name="ghost"))
    assert missing.code == ErrorCode.NOT_FOUND and "'ghost'" in missing.info.message

    await call(nc, P.STYLES_DELETE, DeleteStyle(name="neon"))
    gone = await failure(nc, P.STYLES_GET, GetStyle(name="NEON"))
    assert gone.code == ErrorCode.NOT_FOUND and gone.info.details == {"valid": ["other"]}
    again = await failure(nc, P.STYLES_DELETE, DeleteStyle(name="neon"))
    assert again.code == ErrorCode.NOT_FOUND


@pytest.mark.parametrize(
    ("style", "field", "words"),
    [
        (Style(name="a", render_types=["SD XL"]), "style.render_types[0]", "not a render type name"),
        (Style(name="a", positive="art of {Prompt}"), "style.positive", "{prompt}"),
        (Style(name="a", negative="{ prompt }, bad"), "style.negative", "{prompt}"),
        (Style(name="   "), "style.name", "blank"),
    ],
)
async def test_a_style_that_cannot_be_right_is_refused_naming_the_field(
    service: ServiceProcess, nc: NatsClient, style: Style, field: str, words: str
) -> None:
    error = await failure(nc, P.STYLES_SAVE, SaveStyle(style=style))
    assert error.code == ErrorCode.INVALID_REQUEST and error.info.field == field and words in error.info.message


async def test_a_name_beyond_the_contract_is_refused_by_the_decoder(service: ServiceProcess, nc: NatsClient) -> None:
    reply = await nc.request(P.STYLES_SAVE.subject, json.dumps({"style": {"name": "x" * 81}}).encode(), timeout=5)
    assert b'"field":"style.name"' in reply.data


async def test_styles_are_listed_in_order_and_filtered(service: ServiceProcess, nc: NatsClient) -> None:
    await replace_styles(
        nc,
        [
            Style(name="b", category="Paint", sort_order=2),
            Style(name="a", category="paint", sort_order=2),
            Style(name="z", category="photo", sort_order=1, render_types=["sdxl"]),
            Style(name="off", category="photo", enabled=False),
        ],
    )
    assert [s.name for s in await styles(nc)] == ["off", "z", "a", "b"]
    assert [s.name for s in await styles(nc, category="PAINT")] == ["a", "b"]
    assert [s.name for s in await styles(nc, render_type="flux")] == ["off", "a", "b"]
    assert [s.name for s in await styles(nc, render_type="sdxl", include_disabled=False)] == ["z", "a", "b"]


# -- import -----------------------------------------------------------------------------------------------

FOOOCUS = json.dumps(
    [
        {
            "name": "Fooocus Sharp",
            "prompt": "cinematic still {prompt} . emotional, harmonious",
            "negative_prompt": "anime",
        },
        {"name": "Fooocus Masterpiece", "prompt": "(masterpiece), {prompt}", "negative_prompt": "worst quality"},
        {"name": "Fooocus Negative", "negative_prompt": "deformed"},
        {"name": "sai-line art", "prompt": "line art drawing {prompt}", "negative_prompt": "", "extra": 1},
    ]
)

A1111 = (
    "\ufeffname,prompt,negative_prompt\r\n"
    '"Cinematic, moody","cinematic shot of {prompt}, moody, ""teal and orange""","cartoon, anime"\r\n'
    "# a comment row,ignored,ignored\r\n"
    "\r\n"
    'Poster,"{prompt}\nbold typography\nflat colors",\r\n'
    "Only fragment,vivid colors,dull\r\n"
)


async def test_a_fooocus_json_library_is_imported(service: ServiceProcess, nc: NatsClient) -> None:
    await replace_styles(nc, [])
    report = await import_file(nc, "fooocus_json", FOOOCUS, category="fooocus")
    assert report.added == ["Fooocus Sharp", "Fooocus Masterpiece", "Fooocus Negative", "sai-line art"]
    assert report.updated == [] and report.skipped == [] and not report.dry_run
    library = {s.name: s for s in await styles(nc)}
    assert library["Fooocus Sharp"].positive == "cinematic still {prompt} . emotional, harmonious"
    assert library["Fooocus Negative"].positive == "{prompt}" and library["Fooocus Negative"].negative == "deformed"
    assert {s.category for s in library.values()} == {"fooocus"}
    built = await build(nc, "a dog", styles=["fooocus sharp", "Fooocus Negative"])
    assert built.positive == "cinematic still a dog . emotional, harmonious"
    assert built.negative == "anime, deformed"


async def test_an_a1111_csv_with_quotes_multiline_fields_comments_and_a_bom_is_imported(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [])
    report = await import_file(nc, "a1111_csv", A1111)
    assert report.added == ["Cinematic, moody", "Poster", "Only fragment"]
    library = {s.name: s for s in await styles(nc)}
    assert library["Cinematic, moody"].positive == 'cinematic shot of {prompt}, moody, "teal and orange"'
    assert library["Cinematic, moody"].negative == "cartoon, anime"
    assert library["Poster"].positive == "{prompt}\nbold typography\nflat colors"
    built = await build(nc, "a city", styles=["Only fragment"])
    assert (built.positive, built.negative) == ("a city, vivid colors", "dull")

    # A1111's older header called the prompt column "text".
    old = await import_file(nc, "a1111_csv", "name,text\nLegacy,old {prompt}\n")
    assert old.added == ["Legacy"]


async def test_conflicts_are_skipped_or_updated_and_the_report_says_why(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(
        nc,
        [
            Style(
                name="fooocus sharp",
                positive="old {prompt}",
                category="mine",
                render_types=["sdxl"],
                is_default=True,
                sort_order=7,
            ),
            Style(name="Fooocus Negative", positive="{prompt}", negative="deformed"),
        ],
    )
    skipped = await import_file(nc, "fooocus_json", FOOOCUS)
    assert skipped.added == ["Fooocus Masterpiece", "sai-line art"]
    assert [s.name for s in skipped.skipped] == ["Fooocus Sharp", "Fooocus Negative"]
    assert "on_conflict=skip" in skipped.skipped[0].reason
    assert (await call(nc, P.STYLES_GET, GetStyle(name="fooocus sharp"))).positive == "old {prompt}"

    updated = await import_file(nc, "fooocus_json", FOOOCUS, on_conflict="update")
    assert updated.added == []
    assert updated.updated == ["fooocus sharp"]
    # Unchanged styles are reported as such rather than as updates.
    assert {s.name: s.reason for s in updated.skipped} == {
        "Fooocus Masterpiece": "identical to the stored style 'Fooocus Masterpiece'",
        "Fooocus Negative": "identical to the stored style 'Fooocus Negative'",
        "sai-line art": "identical to the stored style 'sai-line art'",
    }
    stored = await call(nc, P.STYLES_GET, GetStyle(name="Fooocus Sharp"))
    # The file's prompts replace the old ones; what the file cannot say (category, render types, flags) stays.
    assert stored.name == "fooocus sharp" and stored.positive.startswith("cinematic still")
    assert (stored.category, stored.render_types, stored.is_default, stored.sort_order) == ("mine", ["sdxl"], True, 7)


async def test_a_name_repeated_in_the_file_is_skipped_and_a_dry_run_writes_nothing(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [])
    content = "name,prompt,negative_prompt\nDup,first {prompt},\nother,{prompt} x,\nDUP,second {prompt},\n"
    dry = await import_file(nc, "a1111_csv", content, dry_run=True)
    assert dry.dry_run and dry.added == ["Dup", "other"]
    assert dry.skipped == [SkippedStyle(name="DUP", reason="line 4: same name as line 2 of the file, which was used")]
    assert await styles(nc) == []
    real = await import_file(nc, "a1111_csv", content)
    assert real.added == dry.added and real.skipped == dry.skipped
    assert (await call(nc, P.STYLES_GET, GetStyle(name="dup"))).positive == "first {prompt}"


async def test_a_messy_a1111_csv_imports_every_good_row_and_reports_each_row(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [Style(name="kept", positive="kept {prompt}")])
    content = (
        "name,prompt,negative_prompt\n"
        ">>>>>> Generic Styles,,\n"
        'odd,"a "quoted" word {prompt}", " "\n'
        "x,a, b, c,d\n"
        "kept,new {prompt},\n"
        "ok,{prompt} fine,\n"
        "OK,{prompt} again,\n"
        '"a\nb",c,d\n'
        ",{prompt} x,\n"
        'bad,"never closed\n'
    )
    dry = await import_file(nc, "a1111_csv", content, dry_run=True, category="upload")
    assert dry.dry_run and dry.added == ["odd", "ok", "a b"] and dry.separators == 1
    rows = [(r.where, r.name, r.action, r.category) for r in dry.rows]
    assert rows == [
        ("line 2", ">>>>>> Generic Styles", "separator", ""),
        ("line 3", "odd", "add", "Generic Styles"),
        ("line 4", "x", "skip", ""),
        ("line 5", "kept", "skip", "Generic Styles"),
        ("line 6", "ok", "add", "Generic Styles"),
        ("line 7", "OK", "skip", "Generic Styles"),
        ("line 8", "a b", "add", "Generic Styles"),
        ("line 10", "", "skip", ""),
        ("line 11", "bad", "skip", ""),
    ]
    reasons = {r.where: r.reason for r in dry.rows}
    assert reasons["line 2"] == "Generic Styles" and "5 fields" in reasons["line 4"]
    assert "on_conflict=skip" in reasons["line 5"] and "same name as line 6" in reasons["line 7"]
    assert "no name" in reasons["line 10"] and "never closed" in reasons["line 11"]
    assert len(dry.skipped) == 5
    assert [s.name for s in await styles(nc)] == ["kept"]  # a dry run writes nothing

    real = await import_file(nc, "a1111_csv", content, on_conflict="update", category="upload")
    assert real.added == dry.added and real.updated == ["kept"]
    library = {s.name: s for s in await styles(nc)}
    assert library["odd"].positive == 'a quoted" word {prompt}"' and library["odd"].category == "Generic Styles"
    assert library["kept"].positive == "new {prompt}"


MALFORMED = [
    ("fooocus_json", '[{"name": "ok", "prompt": "{prompt}"},\n {"name": "broken", ]', "not valid JSON", "line 2"),
    ("fooocus_json", '{"name": "a", "prompt": "{prompt}"}', "got a JSON object", "list"),
    ("fooocus_json", '[{"name": "ok"}, "just a string"]', "entry 2 is a JSON string", "object"),
    ("fooocus_json", '[{"name": "ok"}, {"name": "b"}, {"prompt": "{prompt} x"}]', "entry 3 has no name", "name"),
    ("fooocus_json", '[{"name": "ok"}, {"name": "  "}]', "entry 2 has no name", "name"),
    ("fooocus_json", '[{"name": "ok"}, {"name": "b", "prompt": ["x"]}]', "entry 2 ('b')", "must be a string"),
    ("fooocus_json", json.dumps([{"name": "ok"}, {"name": "n" * 81}]), "entry 2", "`name`"),
    ("fooocus_json", '[{"name": "ok"}, {"name": "b", "prompt": "art of { Prompt }"}]', "entry 2 ('b')", "{prompt}"),
    ("fooocus_json", "[]", "holds no styles", "JSON list"),
    ("a1111_csv", "title,positive\nx,y\n", "lacks the columns name, prompt", "name,prompt,negative_prompt"),
    ("a1111_csv", "name,negative_prompt\nx,y\n", "lacks the column prompt", "header"),
    ("a1111_csv", "", "empty", "header"),
    ("a1111_csv", "name,prompt,negative_prompt\n", "holds no styles", "CSV"),
]


@pytest.mark.parametrize(("format", "content", "where", "hint"), MALFORMED)
async def test_a_malformed_file_is_a_clear_error_and_imports_nothing(
    service: ServiceProcess, nc: NatsClient, format: str, content: str, where: str, hint: str
) -> None:
    await replace_styles(nc, [Style(name="keep", positive="kept {prompt}")])
    for on_conflict in ("skip", "update"):
        error = await failure(
            nc,
            P.STYLES_IMPORT,
            ImportStyles(format=format, content=content, on_conflict=on_conflict),  # type: ignore[arg-type]
        )
        assert error.code == ErrorCode.INVALID_REQUEST and error.info.field == "content"
        assert where in error.info.message and hint in error.info.message, error.info.message
    assert [(s.name, s.positive) for s in await styles(nc)] == [("keep", "kept {prompt}")]


async def test_an_unknown_format_names_the_field(service: ServiceProcess, nc: NatsClient) -> None:
    reply = await nc.request(P.STYLES_IMPORT.subject, b'{"format": "comfy", "content": "[]"}', timeout=5)
    assert b'"field":"format"' in reply.data


async def test_bulk_actions_change_every_named_style_or_none(service: ServiceProcess, nc: NatsClient) -> None:
    await replace_styles(nc, [Style(name=f"s{i}", positive="{prompt}", category="old") for i in range(3)])
    moved = await call(nc, P.STYLES_BULK, BulkStyles(names=["S0", "s1"], action="set_category", category=" new  one "))
    assert moved.changed == ["s0", "s1"]
    await call(nc, P.STYLES_BULK, BulkStyles(names=["s1", "s2"], action="disable"))
    assert [(s.name, s.category, s.enabled) for s in await styles(nc)] == [
        ("s0", "new one", True),
        ("s1", "new one", False),
        ("s2", "old", False),
    ]
    unknown = await failure(nc, P.STYLES_BULK, BulkStyles(names=["s0", "ghost"], action="delete"))
    assert unknown.code == ErrorCode.NOT_FOUND and "ghost" in unknown.info.message and unknown.info.field == "names"
    assert len(await styles(nc)) == 3  # nothing deleted
    await call(nc, P.STYLES_BULK, BulkStyles(names=["s0", "s2"], action="delete"))
    await call(nc, P.STYLES_BULK, BulkStyles(names=["s1"], action="enable"))
    assert [(s.name, s.enabled) for s in await styles(nc)] == [("s1", True)]


# -- export -----------------------------------------------------------------------------------------------


async def test_export_writes_both_formats_and_reimports_to_the_same_styles(
    service: ServiceProcess, nc: NatsClient
) -> None:
    library = [
        Style(name="Cinematic, moody", positive='shot of {prompt}, "teal"', negative="cartoon, anime", sort_order=1),
        Style(name="Poster", positive="{prompt}\nbold typography", negative="", sort_order=2),
        Style(name="Fragment", positive="vivid colors", negative="dull", sort_order=3),
    ]
    await replace_styles(nc, library)
    a1111 = await call(nc, P.STYLES_EXPORT, ExportStyles(format="a1111_csv"))
    assert a1111.filename == "styles.csv" and a1111.count == 3
    rows = list(csv.reader(io.StringIO(a1111.content, newline="")))
    assert rows[0] == ["name", "prompt", "negative_prompt"]
    assert rows[1:] == [[s.name, s.positive, s.negative] for s in library]

    fooocus = await call(nc, P.STYLES_EXPORT, ExportStyles(format="fooocus_json", names=["poster", "FRAGMENT"]))
    assert fooocus.filename.endswith(".json") and fooocus.count == 2
    assert json.loads(fooocus.content) == [
        {"name": "Poster", "prompt": "{prompt}\nbold typography", "negative_prompt": ""},
        {"name": "Fragment", "prompt": "vivid colors", "negative_prompt": "dull"},
    ]

    for export in (a1111, fooocus):
        await replace_styles(nc, [])
        report = await import_file(nc, export.format, export.content)
        assert len(report.added) == export.count
        again = {s.name: (s.positive, s.negative) for s in await styles(nc)}
        assert again == {s.name: (s.positive, s.negative) for s in library if s.name in again}

    unknown = await failure(nc, P.STYLES_EXPORT, ExportStyles(format="a1111_csv", names=["Poster", "ghost"]))
    assert unknown.code == ErrorCode.NOT_FOUND and unknown.info.field == "names"
    assert unknown.info.details is not None and unknown.info.details["unknown"] == ["ghost"]


async def test_a_style_limited_to_a_render_type_that_does_not_exist_is_refused(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [])
    refused = await failure(
        nc, P.STYLES_SAVE, SaveStyle(style=Style(name="turbo", render_types=["sdxl", "sdxl-turbo"]))
    )
    assert refused.code == ErrorCode.INVALID_REQUEST and refused.info.field == "style.render_types[1]"
    assert "no render type named 'sdxl-turbo'" in refused.info.message and "sdxl" in refused.info.message
    assert await styles(nc) == []  # nothing saved
    saved = await call(nc, P.STYLES_SAVE, SaveStyle(style=Style(name="turbo", render_types=["SDXL", "flux"])))
    assert saved.render_types == ["sdxl", "flux"]
