"""Which outputs the dispatcher asks ComfyUI to render as JPEG for inline previews (dispatch_service.renditions)."""

from __future__ import annotations

import io

import pytest
from doubles.png import encode_solid_png

from dispatch_service.renditions import MAX_RENDITION_PIXELS, wants_rendition

SIDE = int(MAX_RENDITION_PIXELS**0.5)  # the largest square that gets one


@pytest.mark.parametrize(
    ("data", "content_type", "wanted"),
    [
        (encode_solid_png(512, 512, (200, 40, 90)), "image/png", True),  # truecolour: opaque
        (encode_solid_png(SIDE, SIDE, (200, 40, 90)), "image/png", True),  # MAX_RENDITION_PIXELS exactly
        (encode_solid_png(SIDE, SIDE + 8, (200, 40, 90)), "image/png", False),  # larger: its JPEG is often too big
        (encode_solid_png(512, 512, (200, 40, 90, 255)), "image/png", False),  # an alpha channel: keeps WebP
        (encode_solid_png(512, 512, (200, 40, 90)), "image/webp", False),  # not a PNG by its type
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png", False),  # cut short
        (b"GIF89a" + bytes(40), "image/png", False),  # not a PNG by its bytes
    ],
)
def test_only_an_opaque_png_of_a_preview_worthy_size_gets_a_rendition(
    data: bytes, content_type: str, wanted: bool
) -> None:
    spool = io.BytesIO(data)
    spool.seek(len(data))  # where a download leaves it
    assert wants_rendition(spool, content_type) is wanted
    if content_type == "image/png":
        assert spool.tell() == 0  # its header read from the start, and the spool left there for the store
