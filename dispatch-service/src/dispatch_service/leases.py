"""Slot leases: how several dispatcher replicas share ComfyUI instances without overfilling them.

Each slot of each instance is a key in a JetStream KV bucket (`<instance key>.<slot index>`). Taking a slot
is an atomic create; the holder refreshes it while the job runs; a dispatcher that dies (kill -9) leaves its
leases to expire after the take-over time, after which the slot is free again. So no instance is ever given more
jobs than its slots, whatever the number of replicas.
"""

from __future__ import annotations

import contextlib
import re

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from contracts.runtime.bus import through_election

SLOTS_BUCKET = "hub-dispatch-slots"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def slot_key(instance: str, slot: int) -> str:
    # KV keys allow few characters; instance names are free text, so they are escaped (and kept unique).
    return f"{_UNSAFE.sub(lambda m: f'={ord(m.group()):x}', instance)}.{slot}"


class Lease:
    def __init__(self, kv: KeyValue, key: str, revision: int, instance: str, slot: int) -> None:
        self._kv = kv
        self.key = key
        self.revision = revision
        self.instance = instance
        self.slot = slot

    async def refresh(self, holder: bytes) -> bool:
        """Extend the lease; False if it was lost (expired and taken by someone else)."""
        try:
            self.revision = await self._kv.update(self.key, holder, last=self.revision)
            return True
        except KeyWrongLastSequenceError:
            return False
        except (NoStreamResponseError, TimeoutError):
            return True  # unreachable for a moment: try again at the next refresh, well before the TTL

    async def release(self) -> None:
        # Already expired or taken over: nothing of ours to release. The bucket unreachable (a NATS server of
        # the cluster died, a leader is being elected): the lease expires by itself after its TTL.
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError, NoStreamResponseError, TimeoutError):
            await self._kv.delete(self.key, last=self.revision)


class SlotLeases:
    def __init__(self, js: JetStreamContext, *, ttl_s: float, replicas: int = 1) -> None:
        self._js = js
        self._ttl_s = ttl_s
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        self._kv = await through_election(self._find_or_create, f"opening the {SLOTS_BUCKET} bucket")

    async def _find_or_create(self) -> KeyValue:
        try:
            return await self._js.key_value(SLOTS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            return await self._js.create_key_value(
                config=KeyValueConfig(
                    bucket=SLOTS_BUCKET,
                    ttl=self._ttl_s,
                    storage=StorageType.FILE,  # so a NATS restart keeps the leases of jobs still running
                    replicas=self._replicas,
                    description="Which dispatcher holds which ComfyUI slot",
                )
            )

    async def try_take(self, instance: str, slots: int, holder: bytes) -> Lease | None:
        """Take any free slot of `instance`, or None when all are held."""
        try:
            return await self._try_take(instance, slots, holder)
        except NoStreamResponseError:
            await self.open()  # the bucket is gone (e.g. a new NATS server without our data): make it again
            return await self._try_take(instance, slots, holder)

    async def _try_take(self, instance: str, slots: int, holder: bytes) -> Lease | None:
        assert self._kv is not None
        for slot in range(slots):
            key = slot_key(instance, slot)
            try:
                revision = await self._kv.create(key, holder)
            except KeyWrongLastSequenceError:
                continue
            return Lease(self._kv, key, revision, instance, slot)
        return None

    async def held(self, instance: str, slots: int) -> int:
        """How many slots of `instance` are held by any replica right now."""
        assert self._kv is not None
        count = 0
        for slot in range(slots):
            try:
                entry = await self._kv.get(slot_key(instance, slot))
                count += entry.value is not None and entry.operation is None
            except KeyNotFoundError:
                pass
        return count
