"""What the test doubles' servers share: `async with double:` starts and stops one, and `serve_until_signalled`
runs one as a process of its own (tests that need a separate process, the demo) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from typing import Self


class Served:
    """A double listening on 127.0.0.1: `start(port)` (0: a free one), `stop()`, and its `url` once started."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    async def start(self, port: int = 0) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve_until_signalled(double: Served, port: int, name: str) -> None:
    """Run `double` on `port` until SIGTERM or SIGINT. Once it listens, prints "<name> listening on <url>": the line
    a parent process waits for (it carries the port when 0 was asked)."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await double.start(port)
    print(f"{name} listening on {double.url}", flush=True)
    try:
        await stopped.wait()
    finally:
        await double.stop()
