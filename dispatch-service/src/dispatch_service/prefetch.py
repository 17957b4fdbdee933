"""Outputs downloaded from ComfyUI as soon as their node reports them (its `executed` message), while the rest of the
prompt still runs: by the prompt's end (`execution_success`) they are here, and storing them is what is left.

ComfyUI writes a saved file before it reports the node executed, so the download is of the finished file. Only
saved outputs (type "output") are fetched early, and only the first few of a prompt (each waits in memory, up to
8 MiB, until the prompt ends: the same bound as the outputs stored side by side at the end). A download that fails
or was not made early is simply made at the end, as before, so this only ever saves time: the job's result and its
errors are the same either way. Nothing is stored (and no event sent) before the prompt succeeded.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from typing import IO

from contracts.runtime.logs import get_logger
from dispatch_service.comfyui import ComfyClient, ComfyError, OutputRef

log = get_logger("prefetch")

SPOOLED_IN_MEMORY = 8 * 1024 * 1024  # larger downloads go on to a temporary file


@dataclass
class Downloaded:
    """One output file, downloaded: its bytes in `spool` (close it), its content type as ComfyUI served it."""

    spool: IO[bytes]
    content_type: str


async def download(client: ComfyClient, ref: OutputRef) -> Downloaded:
    """Fetch one output into a spool (memory, or a temporary file past 8 MiB); never loaded whole otherwise."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOLED_IN_MEMORY)  # noqa: SIM115  # the caller closes it
    try:
        async with client.open_output(ref) as stream:
            async for chunk in stream.chunks():
                spool.write(chunk)
            return Downloaded(spool, stream.content_type)
    except BaseException:
        spool.close()
        raise


class OutputPrefetch:
    """The early downloads of one attempt: `start` on each `executed` output, `take` when storing, `close` at its
    end (whatever was not taken is dropped)."""

    def __init__(self, client: ComfyClient, limit: int) -> None:
        self._client = client
        self._limit = limit
        self._started = 0
        self._downloads: dict[OutputRef, asyncio.Task[Downloaded]] = {}

    def start(self, ref: OutputRef) -> None:
        """Begin downloading a saved output its node just reported (a no-op past the limit, for a temporary preview,
        or for one already begun: a node reported twice)."""
        if ref.type != "output" or ref in self._downloads or self._started >= self._limit:
            return
        self._started += 1
        self._downloads[ref] = asyncio.ensure_future(download(self._client, ref))

    async def take(self, ref: OutputRef) -> Downloaded | None:
        """The early download of `ref`, or None when there is none or it failed (the caller downloads it now)."""
        task = self._downloads.pop(ref, None)
        if task is None:
            return None
        try:
            return await task
        except ComfyError as exc:
            # E.g. the instance dropped the connection just then: the download at the end says what is wrong.
            log.info("early download of an output failed; fetching it again", output=ref.filename, error=str(exc))
            return None

    def close(self) -> None:
        """Drop the downloads not taken (the attempt failed, was cancelled, or reported more than it kept)."""
        for task in self._downloads.values():
            if not task.done():
                task.cancel()  # `download` closes its spool
            elif not task.cancelled() and task.exception() is None:
                task.result().spool.close()
        self._downloads.clear()
