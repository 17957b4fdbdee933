"""Input images are decoded (Pillow) before a job is accepted, so a broken or hostile file is refused at the door
with the field that carried it, instead of failing later on a ComfyUI instance.

Needs the `images` extra of genimage-contracts (Pillow).
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from contracts.errors import ErrorCode, HubError

# What ComfyUI's LoadImage opens and the hub passes on, by Pillow's format name.
ACCEPTED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
ACCEPTED_NAMES = "PNG, JPEG, WebP or GIF"


def _refused(field: str, why: str) -> HubError:
    return HubError(
        ErrorCode.INVALID_REQUEST,
        f"{field}: {why}; send a complete {ACCEPTED_NAMES} file",
        field=field,
        details={"accepted": sorted(ACCEPTED_FORMATS.values())},
    )


def checked_image_type(data: bytes, field: str) -> str:
    """The content type of `data` once Pillow has verified and fully decoded it, or an error naming `field`.

    `verify()` checks the structure (checksums, chunk order) but not the pixel data, and leaves the image unusable,
    so it is opened again and `load()`ed: that is what finds a truncated file. Pillow's decompression-bomb limit
    (`Image.MAX_IMAGE_PIXELS`) is applied before any pixel is decoded. CPU-bound: call it in a worker thread.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format or ""
            width, height = probe.size
            probe.verify()
        if kind not in ACCEPTED_FORMATS:
            raise _refused(field, f"a {kind} image is not accepted")
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            raise _refused(field, f"{width}x{height} pixels is more than the {Image.MAX_IMAGE_PIXELS} allowed")
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        raise _refused(field, "not an image") from None
    except Image.DecompressionBombError as exc:
        raise _refused(field, f"too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a damaged or truncated file with these (SyntaxError from some plugins' parsers).
        raise _refused(field, f"not a valid image ({exc})") from None
    return ACCEPTED_FORMATS[kind]


def image_size(source: BinaryIO) -> tuple[int, int] | None:
    """(width, height) read from an image file's header (PNG, JPEG, WebP, GIF, ...); None for anything else
    (a video, a damaged file). Pillow opens lazily: only the header is read, no pixel is decoded."""
    source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the size is wanted
            with Image.open(source) as image:
                return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return None
    finally:
        source.seek(0)
