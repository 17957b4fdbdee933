"""A webhook receiver for the tests: a plain HTTP server in the test process on loopback (allowed to the gateway by
HUB_INPUT_URL_ALLOW, the same rule as input image URLs), and the signature check a receiver makes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next status of `statuses` (then 200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def status_for(self, body: bytes) -> int:
        return self.statuses.pop(0) if self.statuses else 200

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.got.append(Received(headers=headers, body=body, at=time.monotonic()))
        status = self.status_for(body)
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()
        self.arrived.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        """Until `count` of the POSTs `counted` picks came."""
        deadline = time.monotonic() + timeout_s
        while len(self.counted()) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))

    def counted(self) -> list[Received]:
        """The POSTs `wait_for` counts: all of them here."""
        return self.got

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


R = TypeVar("R", bound=Receiver)


@contextlib.asynccontextmanager
async def serving(receiver: R) -> AsyncIterator[R]:
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    async with server:
        yield receiver


def receiving(statuses: list[int]) -> contextlib.AbstractAsyncContextManager[Receiver]:
    return serving(Receiver(statuses=statuses))


def expected_signature(secret: str, got: Received) -> str:
    """The receiver's check, as README (Webhooks) shows it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
