"""Answering an HTTP request for a stored output, the same way in the gateway (/images) and the UI (/ui-images).

Framework-free: `output_reply` gives status, headers and body, which each app wraps in its own response type.
The status is only decided once the body is known to be readable: an output up to `WHOLE_BODY_MAX` bytes (every
image) is read whole first, a larger one at least its first chunk; a failing read is a 404 or 503 then, never a
`200` with a truncated body.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import OutputFile
from contracts.runtime.storage import OutputStorage

WHOLE_BODY_MAX = 16 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class OutputReply:
    status: int
    headers: dict[str, str]
    media_type: str | None = None
    body: bytes | AsyncIterator[bytes] = b""
    error: HubError | None = field(default=None)  # set for a 404 or 503: the app renders its own error page


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(start, end inclusive) for one satisfiable range; None: no usable Range (serve all); False: 416."""
    match = _RANGE.match(header.strip())
    if not match:
        return None  # several ranges or another unit: the whole file is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            return False
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return False
    return start, end


def output_etag(output_id: str) -> str:
    """Outputs never change, so the id names the content (hashed: the id itself is the capability)."""
    return '"' + hashlib.sha256(output_id.encode()).hexdigest()[:32] + '"'


async def output_reply(
    outputs: OutputStorage,
    output_id: str,
    *,
    if_none_match: str | None = None,
    range_header: str | None = None,
    cache_control: str = "private, max-age=31536000, immutable",
) -> OutputReply:
    """The answer to GET of one output: 200/206 with its bytes, 304, 416, or 404/503 with `error` set."""
    try:
        info = await outputs.info(output_id) if len(output_id) <= 64 else None
    except HubError as exc:
        return OutputReply(status=503, headers={}, error=exc)
    if info is None:
        return _missing(output_id)
    headers = {
        "Cache-Control": cache_control,
        "ETag": output_etag(output_id),
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{info.filename}"',
    }
    if if_none_match == headers["ETag"]:
        return OutputReply(status=304, headers=headers)
    span = parse_range(range_header, info.size) if range_header else None
    if span is False:
        return OutputReply(status=416, headers={**headers, "Content-Range": f"bytes */{info.size}"})
    start, end = span if isinstance(span, tuple) else (0, info.size - 1)
    try:
        body = await _readable_body(outputs, info, start, end)
    except HubError as exc:
        return _missing(output_id) if exc.info.code == ErrorCode.NOT_FOUND else OutputReply(503, {}, error=exc)
    headers["Content-Length"] = str(end - start + 1)
    if isinstance(span, tuple):
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    return OutputReply(status=206 if span else 200, headers=headers, media_type=info.content_type, body=body)


def _missing(output_id: str) -> OutputReply:
    message = f"no image `{output_id}` (it may have been deleted)"
    return OutputReply(status=404, headers={}, error=HubError(ErrorCode.NOT_FOUND, message))


async def _readable_body(
    outputs: OutputStorage, info: OutputFile, start: int, end: int
) -> bytes | AsyncIterator[bytes]:
    """Bytes start..end (inclusive): read whole when small, else a stream whose first chunk is already read."""
    chunks = _span(outputs.read(info.output_id), start, end)
    if info.size <= WHOLE_BODY_MAX:
        return b"".join([chunk async for chunk in chunks])
    first = await anext(chunks, b"")

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return rest()


async def _span(chunks: AsyncIterator[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    offset = 0
    async for chunk in chunks:
        chunk_start, offset = offset, offset + len(chunk)
        if offset <= start:
            continue
        if chunk_start > end:
            break
        yield chunk[max(0, start - chunk_start) : end + 1 - chunk_start]
