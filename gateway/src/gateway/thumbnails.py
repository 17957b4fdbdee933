"""Small WebP previews of generated images, inlined in tool results so an LLM can see what it made."""

from __future__ import annotations

import io

from PIL import Image

DEFAULT_MAX_BYTES = 48 * 1024
_SIDES = (384, 256, 192, 128, 96, 64)
_QUALITIES = (80, 60, 40)


def webp_thumbnail(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | None:
    """A WebP no larger than `max_bytes` (smaller sides and qualities tried in turn); None if impossible."""
    try:
        with Image.open(io.BytesIO(data)) as source:
            source.load()
            image = source.convert("RGBA" if source.mode in ("RGBA", "LA", "P") else "RGB")
    except (OSError, ValueError):
        return None
    for side in _SIDES:
        small = image.copy()
        small.thumbnail((side, side))
        for quality in _QUALITIES:
            out = io.BytesIO()
            small.save(out, format="WEBP", quality=quality)
            if out.tell() <= max_bytes:
                return out.getvalue()
    return None
