"""prompt-service over real NATS: how styles compose into the final prompts, defaults, and the errors for
styles that cannot be used."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from harness import ServiceProcess
from nats.aio.client import Client as NatsClient
from prompt_support import P, build, built_with, failure, prompt_fixture, prompt_service, replace_styles

from contracts.errors import ErrorCode
from contracts.messages.styles import BuildPrompt, BulkStyles, DeleteStyle, SaveStyle, Style
from contracts.runtime.bus import call
from hub_deploy.natsserver import NatsServer

service = prompt_fixture("prompt-build")


def style(name: str, positive: str = "{prompt}", negative: str = "", **fields: object) -> Style:
    return Style(name=name, positive=positive, negative=negative, **fields)  # type: ignore[arg-type]


async def test_styles_apply_in_the_order_named_each_wrapping_the_result_of_the_previous(
    service: ServiceProcess, nc: NatsClient
) -> None:
    frame = style("frame", "framed picture of {prompt}, gold frame", "ugly frame")
    noir = style("noir", "film noir still of {prompt}, black and white", "color")
    built = await built_with(nc, [frame, noir], "a cat on a roof", negative_prompt="dog")
    assert built.positive == "film noir still of framed picture of a cat on a roof, gold frame, black and white"
    assert built.negative == "dog, ugly frame, color"
    assert built.styles_applied == ["frame", "noir"]
    assert [(t.step, t.style) for t in built.trace if t.step == "style"] == [("style", "frame"), ("style", "noir")]

    reverse = await build(nc, "a cat on a roof", negative_prompt="dog", styles=["noir", "frame"])
    assert reverse.positive == "framed picture of film noir still of a cat on a roof, black and white, gold frame"
    assert reverse.negative == "dog, color, ugly frame"
    assert reverse.styles_applied == ["noir", "frame"]
    assert not built.enhanced and built.enhancement_error is None and built.user_prompt == "a cat on a roof"


async def test_a_template_without_a_slot_is_appended_and_a_negative_with_a_slot_wraps(
    service: ServiceProcess, nc: NatsClient
) -> None:
    vivid = style("vivid", "vivid colors, high contrast", "dull")
    strict = style("strict", "{prompt}", "({prompt}:1.2)")
    built = await built_with(nc, [vivid, strict], "a lighthouse at dusk", negative_prompt="fog")
    assert built.positive == "a lighthouse at dusk, vivid colors, high contrast"
    assert built.negative == "(fog, dull:1.2)"
    details = {t.style: t.detail for t in built.trace if t.step == "style"}
    assert "appended" in details["vivid"] and "wraps the negative" in details["strict"]

    # Without a user negative, the styles' negatives alone, with no stray separator.
    alone = await build(nc, "a lighthouse", styles=["vivid"])
    assert alone.negative == "dull"


async def test_fragments_a_style_repeats_are_dropped_but_the_users_own_words_are_kept(
    service: ServiceProcess, nc: NatsClient
) -> None:
    sharp = style("sharp", "{prompt}, Highly Detailed, sharp focus", "blurry, lowres")
    crisp = style("crisp", "{prompt}, sharp focus, 8k", "blurry, noise")
    built = await built_with(nc, [sharp, crisp], "a fox, highly detailed, highly detailed", negative_prompt="Blurry")
    # The user's repetition stays (it may be deliberate emphasis); what the styles repeat goes.
    assert built.positive == "a fox, highly detailed, highly detailed, sharp focus, 8k"
    assert built.negative == "Blurry, lowres, noise"
    dedupe = {(t.style, t.detail) for t in built.trace if t.step == "dedupe"}
    assert ("sharp", "left out of the prompt, already present: 'Highly Detailed'") in dedupe
    assert ("crisp", "left out of the prompt, already present: 'sharp focus'") in dedupe
    assert any(s == "crisp" and "'blurry'" in d and "negative" in d for s, d in dedupe)


async def test_default_styles_apply_when_none_is_named_in_their_order_and_an_empty_list_applies_none(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(
        nc,
        [
            style("second", "{prompt}, second", is_default=True, sort_order=20),
            style("first", "{prompt}, first", "bad", is_default=True, sort_order=10),
            style("off", "{prompt}, off", is_default=True, enabled=False, sort_order=5),
            style("plain", "{prompt}, plain"),
        ],
    )
    built = await build(nc, "a boat")
    assert built.positive == "a boat, first, second"
    assert built.negative == "bad"
    assert built.styles_applied == ["first", "second"]
    assert built.trace[0].step == "default_styles" and "first, second" in built.trace[0].detail

    none = await build(nc, "a boat", negative_prompt="rain", styles=[])
    assert (none.positive, none.negative, none.styles_applied) == ("a boat", "rain", [])

    named = await build(nc, "a boat", styles=["plain"])  # naming styles replaces the defaults
    assert named.positive == "a boat, plain"


async def test_default_styles_made_for_other_render_types_are_left_out(service: ServiceProcess, nc: NatsClient) -> None:
    await replace_styles(
        nc,
        [
            style("everywhere", "{prompt}, everywhere", is_default=True, sort_order=1),
            style("xl-only", "{prompt}, xl", is_default=True, render_types=["sdxl"], sort_order=2),
        ],
    )
    sdxl = await build(nc, "a tree", render_type="sdxl")
    assert sdxl.styles_applied == ["everywhere", "xl-only"]
    flux = await build(nc, "a tree", render_type="flux")
    assert flux.styles_applied == ["everywhere"]
    skipped = [t for t in flux.trace if t.step == "style_skipped"]
    assert skipped and skipped[0].style == "xl-only" and "'flux'" in skipped[0].detail
    # No render type named (the default one, unknown here): a restricted default cannot be shown to suit.
    unnamed = await build(nc, "a tree")
    assert unnamed.styles_applied == ["everywhere"]
    assert any(t.step == "style_skipped" and t.style == "xl-only" for t in unnamed.trace)


async def test_style_names_match_case_insensitively_and_a_repeated_name_applies_once(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [style("Oil Painting", "oil painting of {prompt}", "photo")])
    built = await build(nc, "a pear", styles=["oil painting", "  OIL   PAINTING ", "Oil Painting"])
    assert built.positive == "oil painting of a pear"
    assert built.styles_applied == ["Oil Painting"]
    assert sum(t.step == "style_skipped" for t in built.trace) == 2


async def test_an_unknown_style_is_an_error_naming_it_and_listing_the_valid_ones(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(
        nc, [style("anime"), style("watercolor"), style("hidden", enabled=False), style("xl", render_types=["sdxl"])]
    )
    error = await failure(nc, P.BUILD, BuildPrompt(prompt="a cat", styles=["anime", "animé", "vaporwave"]))
    assert error.code == ErrorCode.NOT_FOUND and error.info.field == "styles"
    assert "'animé'" in error.info.message and "'vaporwave'" in error.info.message
    assert error.info.details is not None
    assert error.info.details["unknown"] == ["animé", "vaporwave"]
    # The choices that would work: enabled ones (any render type, as the request named none).
    assert error.info.details["valid"] == ["anime", "watercolor", "xl"]

    scoped = await failure(nc, P.BUILD, BuildPrompt(prompt="a cat", styles=["nope"], render_type="flux"))
    assert scoped.info.details is not None and scoped.info.details["valid"] == ["anime", "watercolor"]


async def test_a_disabled_style_asked_for_by_name_is_an_error(service: ServiceProcess, nc: NatsClient) -> None:
    await replace_styles(nc, [style("anime"), style("retired", enabled=False)])
    error = await failure(nc, P.BUILD, BuildPrompt(prompt="a cat", styles=["anime", "Retired"]))
    assert error.code == ErrorCode.INVALID_REQUEST and error.info.field == "styles"
    assert "'retired' is disabled" in error.info.message
    assert error.info.details == {"disabled": ["retired"], "valid": ["anime"]}


async def test_a_style_made_for_another_render_type_is_incompatible_unless_no_render_type_is_named(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(
        nc,
        [style("anime"), style("xl-detail", "{prompt}, xl detail", render_types=["sdxl", "img2img"])],
    )
    error = await failure(nc, P.BUILD, BuildPrompt(prompt="a cat", styles=["xl-detail"], render_type="flux"))
    assert error.code == ErrorCode.INCOMPATIBLE and error.info.field == "styles"
    assert "'xl-detail' is for sdxl, img2img" in error.info.message and "'flux'" in error.info.message
    assert error.info.details == {
        "incompatible": {"xl-detail": ["sdxl", "img2img"]},
        "render_type": "flux",
        "valid": ["anime"],
    }
    ok = await build(nc, "a cat", styles=["xl-detail"], render_type="SDXL")
    assert ok.positive == "a cat, xl detail"
    unchecked = await build(nc, "a cat", styles=["xl-detail"])
    assert unchecked.styles_applied == ["xl-detail"]
    assert [t.style for t in unchecked.trace if t.step == "style_unchecked"] == ["xl-detail"]


async def test_preview_builds_the_same_prompts_as_build(service: ServiceProcess, nc: NatsClient) -> None:
    await replace_styles(nc, [style("frame", "framed {prompt}", "ugly", is_default=True)])
    for fields in ({}, {"styles": ["frame"]}, {"styles": []}):
        built = await build(nc, "a cat", negative_prompt="dog", **fields)
        previewed = await build(nc, "a cat", negative_prompt="dog", endpoint=P.PREVIEW, **fields)
        assert previewed == built


async def test_bad_build_requests_name_the_field(service: ServiceProcess, nc: NatsClient) -> None:
    blank = await failure(nc, P.BUILD, BuildPrompt(prompt="   "))
    assert blank.code == ErrorCode.INVALID_REQUEST and blank.info.field == "prompt"
    empty = await failure(nc, P.BUILD, BuildPrompt(prompt=""))
    assert empty.code == ErrorCode.INVALID_REQUEST and empty.info.field == "prompt"
    reply = await nc.request(P.BUILD.subject, b'{"prompt": "a cat", "style": ["anime"]}', timeout=5)
    assert b'"field":"style"' in reply.data and b"unknown field" in reply.data


async def test_a_build_after_a_change_of_the_default_styles_uses_the_changed_ones(
    service: ServiceProcess, nc: NatsClient
) -> None:
    await replace_styles(nc, [style("kept", "{prompt}, kept", is_default=True)])
    assert (await build(nc, "a cat")).styles_applied == ["kept"]  # the defaults are now kept for builds
    await call(
        nc, P.STYLES_SAVE, SaveStyle(style=style("kept", "{prompt}, edited", is_default=True), original_name="kept")
    )
    assert (await build(nc, "a cat")).positive == "a cat, edited"
    await call(nc, P.STYLES_BULK, BulkStyles(names=["kept"], action="disable"))
    assert (await build(nc, "a cat")).styles_applied == []
    await call(nc, P.STYLES_BULK, BulkStyles(names=["kept"], action="enable"))
    assert (await build(nc, "a cat")).styles_applied == ["kept"]
    await call(nc, P.STYLES_DELETE, DeleteStyle(name="kept"))
    assert (await build(nc, "a cat")).styles_applied == []


async def test_every_prompt_replica_builds_with_a_default_style_changed_by_another(tmp_path: Path) -> None:
    """Two prompt services on one database: the one that did not make the change hears of it
    (topics.Prompt.STYLES_CHANGED) and drops the default styles it kept, instead of building with the old ones."""
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    try:
        async with prompt_service(server.url, tmp_path / "data") as first:
            second = ServiceProcess("prompt", dict(first.env), tmp_path / "second.log")
            second.start()
            nc = await nats.connect(server.url)
            try:
                await second.wait_healthy(nc)
                await replace_styles(nc, [style("shared", "{prompt}, old", is_default=True)])
                built = [(await build(nc, "a cat")).positive for _ in range(30)]
                assert set(built) == {"a cat, old"}  # both replicas answered (queue group) and kept it
                await call(
                    nc,
                    P.STYLES_SAVE,
                    SaveStyle(style=style("shared", "{prompt}, new", is_default=True), original_name="shared"),
                )
                await asyncio.sleep(0.2)  # the announcement reaches the other replica
                built = [(await build(nc, "a cat")).positive for _ in range(30)]
                assert set(built) == {"a cat, new"}
            finally:
                await nc.close()
                assert await second.stop() == 0, second.log()
    finally:
        server.stop()
