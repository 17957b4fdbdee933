"""JPEG renditions of image outputs, for the inline previews of jobs that asked (`GenerationRequest.inline_previews`,
the MCP door's). ComfyUI re-encodes an output it serves when `/view` gets `preview=<format>;<quality>` (`jpeg` or
`webp`; a JPEG is made of the image converted to RGB; see tests/data/comfyui-0.3.64/http-get-view-preview-webp.json).
The gateway then decodes the JPEG at a fraction of its size (DCT scaling) instead of inflating the whole PNG; the
cost moves to the instance's CPU, beside its GPU, out of the hub's one process that serves every instance.

Only an opaque PNG gets one (an image with transparency keeps its own WebP preview, made by the gateway). A rendition
that cannot be had (an older ComfyUI that answers the PNG itself, an error, one too large to keep) is logged and the
job goes on: the gateway previews from the output then, as it does for every other output.
"""

from __future__ import annotations

import asyncio
from typing import IO

from contracts.runtime.logs import get_logger
from contracts.runtime.storage import PreviewStore
from dispatch_service.comfyui import ComfyClient, ComfyError, OutputRef

log = get_logger("renditions")

RENDITION = "jpeg;60"  # `/view`'s preview parameter: format and quality (ComfyUI's default quality is 90)
# A key-value entry is one NATS message (at most max_payload, 1 MiB by default): a larger rendition is not kept.
MAX_RENDITION_BYTES = 900 * 1024
# ComfyUI decodes the PNG and encodes the JPEG as it answers (~30 ms for 1024 px on one core): a wait past this is not
# worth the completion it holds back.
RENDITION_TIMEOUT_S = 5.0
# Past 2048 x 2048 px (an upscale's output) the JPEG is often over MAX_RENDITION_BYTES: ComfyUI is not asked for one
# it would make for nothing.
MAX_RENDITION_PIXELS = 2048 * 2048
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OPAQUE_COLOUR_TYPES = (0, 2)  # greyscale, truecolour; 3 (palette) may carry transparency, 4 and 6 have alpha


def wants_rendition(spool: IO[bytes], content_type: str) -> bool:
    """Whether an output (its downloaded bytes, read from the start) is an opaque PNG of at most MAX_RENDITION_PIXELS:
    its IHDR's colour type and size."""
    if content_type != "image/png":
        return False
    spool.seek(0)
    head = spool.read(26)  # signature, IHDR length and type, width, height, bit depth, colour type
    spool.seek(0)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return head[25] in _OPAQUE_COLOUR_TYPES and width * height <= MAX_RENDITION_PIXELS


async def fetch_rendition(client: ComfyClient, ref: OutputRef) -> bytes | None:
    """ComfyUI's JPEG of one output; None (logged) when it gives none within RENDITION_TIMEOUT_S (the job's
    completion waits for it)."""
    try:
        async with asyncio.timeout(RENDITION_TIMEOUT_S), client.open_output(ref, rendition=RENDITION) as stream:
            served = stream.content_type.split(";")[0].strip()
            if served != "image/jpeg":  # a ComfyUI without `preview=` serves the file as it is
                log.info("no JPEG rendition of the output", output=ref.filename, content_type=stream.content_type)
                return None
            data = bytearray()
            async for chunk in stream.chunks():
                data += chunk
                if len(data) > MAX_RENDITION_BYTES:
                    log.info("JPEG rendition of the output too large to keep", output=ref.filename)
                    return None
            return bytes(data)
    except (ComfyError, TimeoutError) as exc:
        log.info("no JPEG rendition of the output", output=ref.filename, error=str(exc) or type(exc).__name__)
        return None


async def keep_rendition(previews: PreviewStore, output_id: str, data: bytes) -> None:
    """Store a rendition under its output's id; a refusal (the bucket is full, NATS away) is logged, not raised."""
    try:
        await previews.save(output_id, data)
    except Exception as exc:  # nats-py's (the bucket is full, NATS is away) or ours: a rendition never fails a job
        log.info("JPEG rendition of the output not kept", output_id=output_id, error=str(exc) or type(exc).__name__)
