"""Small previews of generated images, inlined in tool results so an LLM can see what it made: a JPEG, or a WebP
when the image has transparency (JPEG has no alpha channel)."""

from __future__ import annotations

import io
import math
from typing import NamedTuple

from PIL import Image

DEFAULT_MAX_BYTES = 48 * 1024
_SIDES = (384, 256, 192, 128, 96, 64)
_QUALITIES = (80, 60, 40)
# Speed over the last few percent of size: a preview costs the gateway its CPU once per generation. The image is
# shrunk by a whole factor only (Image.reduce: the average of each f x f box, antialiased), to the largest size
# that fits the side: a 512 px output gives a 256 px preview, a 1024 px one 342 px. A resampling resize to exactly
# the side cost 6-9x the box reduction (512 -> 384 px bilinear: 1.6-2.2 ms against 0.25-0.3 ms to 256 px).
# An opaque preview is a JPEG: libjpeg-turbo encodes a 256-342 px preview of photo-like content 9-10x faster than
# WebP at method 1 (0.3-0.5 ms against 2.6-5.3 ms at quality 80, bench/preview_bench.py) for 1.1-1.3x its bytes,
# and every MCP client shows JPEG. Only an image with transparency keeps WebP (method 1: ~3x faster than the
# default 4 for ~10-20 % more bytes, which the size budget still checks).
_WEBP_METHOD = 1
# A JPEG (ComfyUI's rendition of an output) is decoded straight at the size the whole-factor reduction would give a
# 512, 1024 or 2048 px image (256 px): no full-size decode, no reduction after (0.43 against 0.8 ms at 512 px).
_DRAFT_SIDE = 256


class Preview(NamedTuple):
    data: bytes
    mime_type: str  # "image/jpeg" or "image/webp"


def preview(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Preview | None:
    """A preview no larger than `max_bytes` (smaller sides and qualities tried in turn); None if impossible or
    `data` is not an image Pillow reads."""
    image = _decoded(data)
    if image is None:
        return None
    for side in _SIDES:
        small = _opaque_as_rgb(_reduced(image, side))
        kind, options = ("JPEG", {}) if small.mode == "RGB" else ("WEBP", {"method": _WEBP_METHOD})
        for quality in _QUALITIES:
            out = io.BytesIO()
            small.save(out, format=kind, quality=quality, **options)
            if out.tell() <= max_bytes:
                return Preview(out.getvalue(), f"image/{kind.lower()}")
    return None


def _decoded(data: bytes) -> Image.Image | None:
    """The image in RGB, or RGBA where it may have transparency; converted only when its mode is another."""
    try:
        with Image.open(io.BytesIO(data)) as source:
            if source.format == "JPEG":  # decoded at 1/2, 1/4 or 1/8 (DCT scaling), no smaller than _DRAFT_SIDE
                source.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
            source.load()
            mode = "RGBA" if source.mode in ("RGBA", "LA", "P") else "RGB"
            return source if source.mode == mode else source.convert(mode)
    except (OSError, ValueError):
        return None


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """`image` shrunk by the smallest whole factor that fits it in a `side` square (aspect kept); never enlarged.
    reduce makes a new image from the decoded one: no full-size copy per side (4 MB for 1024 px RGBA)."""
    factor = math.ceil(max(image.size) / side)
    return image if factor <= 1 else image.reduce(factor)


def _opaque_as_rgb(image: Image.Image) -> Image.Image:
    """An RGBA image whose every pixel is opaque (a palette PNG, a mask-less save) as RGB, so it becomes a JPEG;
    checked on the reduced preview (one pass over its alpha channel)."""
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        return image.convert("RGB")
    return image
