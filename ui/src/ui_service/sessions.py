"""Server-side admin sessions in a JetStream key-value bucket, and the secrets every UI replica shares.

Sessions live in NATS rather than in one process, so they survive a restart of the UI and any replica behind
a load balancer knows them. The browser holds only the random session id (HttpOnly, SameSite cookie); the
bucket's TTL expires a session that has been idle for its lifetime. The CSRF signing key is shared the same
way, so a form rendered by one replica (or before a restart) is accepted by another.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import timedelta
from typing import Any

from litestar import types as litestar_types
from litestar.connection import ASGIConnection
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.base import Store
from nats.aio.client import Client as NatsClient
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from contracts.runtime.bus import require_connection, through_election

# Session ids are hex from litestar's backend; anything else in a cookie is not a key we could have made
# (and KV keys allow few characters), so it is simply not found.
_SESSION_ID = re.compile(r"^[0-9a-f]{16,128}$")
SESSION_COOKIE = "session"
# Set by the login handler: the session id the signed-in admin gets instead of the one the browser sent.
NEW_SESSION_ID = "ui.new_session_id"


class RotatingSessionBackend(ServerSideSessionBackend):
    """litestar's server-side sessions with two changes: a sign-in gets a fresh session id (no session
    fixation), and an empty session (a visitor who is not signed in) is neither stored nor given a cookie."""

    def get_session_id(self, connection: ASGIConnection) -> str:
        fresh = connection.scope.get(NEW_SESSION_ID)  # set at sign-in
        return fresh if isinstance(fresh, str) else super().get_session_id(connection)

    async def store_in_message(self, scope_session: Any, message: Any, connection: ASGIConnection) -> None:
        if isinstance(scope_session, dict) and not scope_session:
            if not connection.cookies.get(self.config.key):
                return
            scope_session = litestar_types.Empty  # a session emptied by a handler: delete it, expire the cookie
        await super().store_in_message(scope_session, message, connection)


class SessionConfig(ServerSideSessionConfig):
    _backend_class = RotatingSessionBackend


async def shared_secret(kv: KeyValue, name: str) -> str:
    """The secret stored under `name`, made by whichever replica asks first (an atomic create). A bucket just
    created with several replicas has no leader for a moment: the calls ride that out."""
    candidate = secrets.token_hex(32)
    try:
        await through_election(lambda: kv.create(name, candidate.encode()), f"creating {name}")
        return candidate
    except KeyWrongLastSequenceError:
        entry = await through_election(lambda: kv.get(name), f"reading {name}")
        assert entry.value is not None
        return entry.value.decode()


class KvSessionStore(Store):
    """litestar's session store interface over a NATS KV bucket (opened at service start with `open`)."""

    def __init__(self) -> None:
        self._kv: KeyValue | None = None
        self._ready = asyncio.Event()
        self._nc: NatsClient | None = None

    def open(self, kv: KeyValue, nc: NatsClient | None = None) -> None:
        self._kv = kv
        self._nc = nc
        self._ready.set()

    async def _bucket(self) -> KeyValue:
        if self._nc is not None:  # every signed-in page reads its session: answered at once while NATS is away
            await require_connection(self._nc)
        if self._kv is None:
            await asyncio.wait_for(self._ready.wait(), timeout=10)
        assert self._kv is not None
        return self._kv

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        # expires_in is the bucket's TTL: every write starts the entry's lifetime again.
        if not _SESSION_ID.match(key):
            return
        data = value.encode() if isinstance(value, str) else value
        await (await self._bucket()).put(key, data)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        if not _SESSION_ID.match(key):
            return None
        try:
            entry = await (await self._bucket()).get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return entry.value or None

    async def delete(self, key: str) -> None:
        if not _SESSION_ID.match(key):
            return
        # A purge leaves no earlier value behind for anyone to read back.
        await (await self._bucket()).purge(key)

    async def delete_all(self) -> None:
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return
        for key in keys:
            await kv.purge(key)

    async def exists(self, key: str) -> bool:
        return await self.get(key) is not None

    async def expires_in(self, key: str) -> int | None:
        return None  # the bucket expires entries by itself; litestar never asks for sessions
