"""Pure parts of the gateway: Range parsing, thumbnails, tool schemas, JSON-RPC envelope check, a followed job's
view."""

from __future__ import annotations

import io
import os

import msgspec
import pytest
from jsonschema import Draft202012Validator
from nats.aio.client import Client as NatsClient
from PIL import Image

from contracts.messages import events
from contracts.messages.jobs import GenerationRequest, OutputFile, SubmitReply, Timings
from contracts.runtime.output_http import parse_range
from gateway.followed_job import FollowedJob
from gateway.http_app import _is_json_rpc_message
from gateway.hub_client import HubClient
from gateway.mcp_server import TOOLS, HubMcp, McpSettings, _tool_definitions
from gateway.thumbnails import preview


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=90-500", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=100-", 100, False),
        ("bytes=5-2", 100, False),
        ("bytes=-0", 100, False),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file is a valid answer
        ("items=0-1", 100, None),
    ],
)
def test_range_header_parsing(header: str, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_json_rpc_envelope_check() -> None:
    assert _is_json_rpc_message({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert _is_json_rpc_message({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert _is_json_rpc_message({"jsonrpc": "2.0", "id": "a", "result": {}})
    assert not _is_json_rpc_message({"jsonrpc": "2.0", "id": True, "method": "ping"})
    assert not _is_json_rpc_message({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]})
    assert not _is_json_rpc_message([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_thumbnails_stay_under_the_cap_even_for_noisy_images(mode: str) -> None:
    noise = Image.frombytes(mode, (1024, 1024), os.urandom(1024 * 1024 * len(mode)))
    thumb = preview(_png(noise), max_bytes=16 * 1024)
    assert thumb is not None and len(thumb.data) <= 16 * 1024
    with Image.open(io.BytesIO(thumb.data)) as image:
        assert max(image.size) <= 384
        assert image.format == ("JPEG" if mode == "RGB" else "WEBP")
    assert preview(b"not an image") is None


def test_a_preview_is_a_jpeg_unless_the_image_has_transparency() -> None:
    """JPEG (cheap to encode, shown by every client) for opaque images, an RGBA one whose alpha is all opaque
    included; WebP keeps the alpha channel of one that has transparency."""
    opaque_rgba = Image.new("RGBA", (512, 512), (200, 40, 90, 255))
    see_through = Image.new("RGBA", (512, 512), (200, 40, 90, 255))
    see_through.paste((0, 0, 0, 0), (0, 0, 128, 128))
    cases = ((Image.new("L", (512, 512), 90), "image/jpeg"), (opaque_rgba, "image/jpeg"), (see_through, "image/webp"))
    for image, mime_type in cases:
        thumb = preview(_png(image))
        assert thumb is not None and thumb.mime_type == mime_type, (image.mode, thumb and thumb.mime_type)
        with Image.open(io.BytesIO(thumb.data)) as shown:
            assert shown.get_format_mimetype() == mime_type and shown.size == (256, 256)
            if mime_type == "image/webp":
                assert shown.convert("RGBA").getpixel((10, 10))[3] == 0  # the transparent corner stays so


def test_previews_shrink_by_a_whole_factor_and_never_grow() -> None:
    """A whole-factor box reduction (cheap, antialiased) to the largest size within 384 px: 512 px gives 256."""
    for side, shrunk in ((512, 256), (1024, 342), (300, 300), (1536, 384)):
        thumb = preview(_png(Image.new("RGB", (side, side), (200, 40, 90))))
        assert thumb is not None
        with Image.open(io.BytesIO(thumb.data)) as image:
            assert image.size == (shrunk, shrunk)


def test_a_jpeg_is_decoded_at_a_fraction_of_its_size() -> None:
    """A JPEG (ComfyUI's rendition of an output) is decoded by DCT scaling to no less than 384 px, then reduced: a
    1024 px one is decoded at 512 px and gives 256 px (a PNG of that size, decoded whole, gives 342)."""
    for side, shrunk in ((1024, 256), (512, 256), (2048, 256), (300, 300)):
        source = io.BytesIO()
        Image.new("RGB", (side, side), (200, 40, 90)).save(source, format="JPEG", quality=60)
        thumb = preview(source.getvalue())
        assert thumb is not None and thumb.mime_type == "image/jpeg"
        with Image.open(io.BytesIO(thumb.data)) as image:
            assert image.size == (shrunk, shrunk), side


def test_tool_schemas_are_valid_json_schemas() -> None:
    definitions = _tool_definitions()
    assert [d.name for d in definitions] == [t.name for t in TOOLS]
    for definition in definitions:
        Draft202012Validator.check_schema(definition.input_schema)
        assert definition.input_schema["type"] == "object"
        if definition.output_schema:
            Draft202012Validator.check_schema(definition.output_schema)
    generate = definitions[0].input_schema
    Draft202012Validator(generate).validate({"prompt": "a cat", "input_image": {"url": "https://x.example/a.png"}})
    assert not Draft202012Validator(generate).is_valid({"prompt": "a cat", "width": 10})


def test_the_server_gives_the_sdk_each_tools_input_schema_without_a_listing() -> None:
    """A 2026-07-28 tools/call with arguments has its Mcp-Param-* headers checked against the tool's input schema;
    the server names it at once (else the SDK runs a whole tools/list for each such call). Built on a NATS client
    that is never connected: nothing here talks to the hub."""
    mcp = HubMcp(HubClient(NatsClient(), timeout_s=1.0), McpSettings(), log=None)
    lookup = mcp.server.get_tool_input_schema
    assert lookup is not None
    for definition in _tool_definitions():
        assert lookup(definition.name) == definition.input_schema
    assert lookup("no_such_tool") is None


def test_a_followed_job_is_viewed_as_its_events_tell() -> None:
    """What a held MCP call answers when the dispatcher gives no view in time: the events folded in order."""
    request = GenerationRequest(prompt="a fox", api_key_id="key_1")
    followed = FollowedJob("job1", "a fox", SubmitReply(job_id="job1", status="accepted", render_type="sdxl", seed=7))
    assert followed.view.status == "accepted" and followed.view.render_type == "sdxl" and followed.view.seed == 7
    accepted = events.JobAccepted(
        job_id="job1", seq=1, at=100.0, request=request, render_type="sdxl", positive_prompt="a fox, detailed",
        negative_prompt="blurry", styles=["photo"], seed=7, width=512, height=512,
    )  # fmt: skip
    output = OutputFile(output_id="o1", content_type="image/png", size=10, filename="a.png")
    timings = Timings(accepted_at=100.0, started_at=101.0, finished_at=103.0)
    steps: list[events.GenerationEvent] = [
        accepted,
        events.JobQueued(job_id="job1", seq=2, at=100.1),
        events.JobStarted(job_id="job1", seq=3, at=101.0, instance="a", attempt=1, comfy_prompt_id="p1"),
        events.JobRetrying(job_id="job1", seq=4, at=101.5, instance="a", attempt=1, reason="lost"),
        events.JobStarted(job_id="job1", seq=5, at=102.0, instance="b", attempt=2, comfy_prompt_id="p2"),
        events.JobProgress(job_id="job1", seq=6, at=102.5, instance="b", value=5, max=20, percent=25.0),
    ]
    for event in steps:
        followed.note(event)
    running = followed.view
    assert (running.status, running.instance, running.attempts, running.failures) == ("running", "b", 2, ["a: lost"])
    assert running.progress.percent == 25.0 and running.positive_prompt == "a fox, detailed"
    assert running.api_key_id == "key_1" and (running.width, running.height) == (512, 512)
    followed.note(events.OutputStored(job_id="job1", seq=7, at=102.9, instance="b", output=output))
    followed.note(events.OutputStored(job_id="job1", seq=7, at=102.9, instance="b", output=output))  # replayed
    assert followed.view.outputs == [output] and not followed.completed
    followed.note(events.JobCompleted(job_id="job1", seq=8, at=103.0, instance="b", outputs=[output], timings=timings))
    done = followed.view
    assert done.status == "completed" and done.outputs == [output] and done.timings == timings and followed.completed
    assert (done.progress.value, done.progress.max, done.progress.percent) == (20, 20, 100.0)
    # Started from the dispatcher's view (its queue place), a replayed `queued` event changes nothing.
    waiting = FollowedJob("job2", "", SubmitReply(job_id="job2", status="accepted", render_type="sdxl"))
    waiting.start_from(msgspec.structs.replace(running, job_id="job2", status="queued", queue_position=3))
    waiting.note(events.JobQueued(job_id="job2", seq=2, at=100.1))
    assert waiting.view.status == "queued" and waiting.view.queue_position == 3
