"""Pure parts of the gateway: Range parsing, thumbnails, tool schemas, JSON-RPC envelope check."""

from __future__ import annotations

import io
import os

import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from contracts.runtime.output_http import parse_range
from gateway.http_app import _is_json_rpc_message
from gateway.mcp_server import TOOLS, _tool_definitions
from gateway.thumbnails import webp_thumbnail


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


def test_thumbnails_stay_under_the_cap_even_for_noisy_images() -> None:
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    png = io.BytesIO()
    noise.save(png, format="PNG")
    thumb = webp_thumbnail(png.getvalue(), max_bytes=16 * 1024)
    assert thumb is not None and len(thumb) <= 16 * 1024
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.format == "WEBP" and max(image.size) <= 384
    assert webp_thumbnail(b"not an image") is None


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
