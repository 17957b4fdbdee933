"""Minimal PNG writer/reader (zlib + struct only) for the ComfyUI test double and its tests.

The double only needs solid-colour images, so the writer streams one repeated row through zlib:
memory stays flat and a 2048x2048 image costs a few milliseconds.
"""

from __future__ import annotations

import struct
import zlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Magic numbers of the formats Pillow would open; anything else makes LoadImage fail like the real one.
_IMAGE_MAGICS: tuple[bytes, ...] = (PNG_MAGIC, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _pixel_data(width: int, height: int, pixel: bytes) -> bytes:
    """Deflate `height` identical rows (filter byte 0 + pixels) without building the raw image."""
    row = b"\x00" + pixel * width
    compressor = zlib.compressobj(level=6)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    return b"".join(parts)


def encode_solid_png(width: int, height: int, color: tuple[int, ...], text: dict[str, str] | None = None) -> bytes:
    """A `width` x `height` PNG filled with `color` (RGB, or RGBA when 4 values), with tEXt chunks."""
    if width < 1 or height < 1:
        raise ValueError(f"PNG size must be positive, got {width}x{height}")
    colour_type = 6 if len(color) == 4 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
    chunks.append(_chunk(b"IDAT", _pixel_data(width, height, bytes(color))))
    chunks.append(_chunk(b"IEND", b""))
    return PNG_MAGIC + b"".join(chunks)


def _iter_chunks(data: bytes):
    offset = len(PNG_MAGIC)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        yield kind, data[offset + 8 : offset + 8 + length]
        offset += 12 + length


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk, or None when `data` is not a PNG."""
    if not data.startswith(PNG_MAGIC) or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_text(data: bytes) -> dict[str, str]:
    """All tEXt chunks of a PNG as a dict (later keys win, like Pillow's `Image.text`)."""
    out: dict[str, str] = {}
    for kind, payload in _iter_chunks(data):
        if kind == b"tEXt":
            key, _, value = payload.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
    return out


def looks_like_image(data: bytes) -> bool:
    """True when `data` starts like an image file that Pillow could identify."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_IMAGE_MAGICS)
