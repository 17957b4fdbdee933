"""Slot leases: how several dispatcher replicas share ComfyUI instances without overfilling them.

Each slot of each instance is a key in a JetStream KV bucket (`<instance key>.<slot index>`). Taking a slot
is an atomic create; the holder refreshes it while the job runs; a dispatcher that dies (kill -9) leaves its
leases to expire after the take-over time, after which the slot is free again. So no instance is ever given more
jobs than its slots, whatever the number of replicas.

A lease names the replica that holds it (a stable identity, see replica.py), the job and the reply subject of the
job's stream message. A replica restarted after a crash takes the same identity and its predecessor's leases at
once: a job still running on its ComfyUI instance is followed there to its end (adopted, not run twice); the others
are handed back to the stream (a NAK on that reply subject), so they run again first, without waiting out the
take-over time. Leases of another replica are left to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NotJSMessageError
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from contracts.errors import HubError
from contracts.runtime.bus import open_bucket, through_election
from contracts.streams import BucketSpec

SLOTS_BUCKET = "hub-dispatch-slots"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class LeaseNote(msgspec.Struct, frozen=True):
    """The value of a lease: who holds the slot, for which job, and how to hand that job's message back."""

    replica: str
    job_id: str
    reply: str  # the reply subject of the job's stream message (a NAK there redelivers it at once)


def instance_key(instance: str) -> str:
    # KV keys allow few characters; instance names are free text, so they are escaped (and kept unique).
    return _UNSAFE.sub(lambda m: f"={ord(m.group()):x}", instance)


def slot_key(instance: str, slot: int) -> str:
    return f"{instance_key(instance)}.{slot}"


class Lease:
    def __init__(
        self,
        kv: KeyValue,
        key: str,
        revision: int,
        instance: str,
        slot: int,
        value: bytes,
        nc: NatsClient | None,
        *,
        ttl_s: float = 30.0,
        js: JetStreamContext | None = None,
        freed: dict[str, int] | None = None,
    ) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        # A slot lease's release notes the revision of its delete marker in `freed` (see SlotLeases._freed).
        self._js = js
        self._freed = freed
        self._nc = nc
        self.key = key
        self.revision = revision
        self.instance = instance
        self.slot = slot
        self._value = value
        # A refresh and a release run in different tasks: one at a time, so a release names the latest revision.
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Extend the lease; False if it was lost (expired and taken by someone else)."""
        async with self._lock:
            try:
                self.revision = await self._kv.update(self.key, self._value, last=self.revision)
                return True
            except KeyWrongLastSequenceError:
                return False
            except (NoStreamResponseError, TimeoutError):
                return True  # unreachable for a moment: try again at the next refresh, well before the TTL

    async def name(self, note: LeaseNote) -> bool:
        """Say which job holds the slot (a slot taken before its job was fetched); False if the lease was lost."""
        self._value = msgspec.json.encode(note)
        return await self.refresh()

    async def release(self) -> None:
        """Free the slot. Already expired or taken over: nothing of ours to release."""
        if self._nc is not None and not self._nc.is_connected:
            # NATS is away: the job (its outputs wait to be stored) is not held up, and the delete is sent once
            # NATS is back, not buffered by nats-py: a buffered one could reach the bucket after the lease expired
            # and be refused. Left to expire instead, the slot looked taken to every replica until the TTL.
            task = asyncio.ensure_future(self._release_when_back(self._nc))
            _releasing.add(task)
            task.add_done_callback(_releasing.discard)
            return
        await self._delete()

    async def _release_when_back(self, nc: NatsClient) -> None:
        async def delete() -> None:
            async with self._lock:
                with contextlib.suppress(BadRequestError):  # "wrong last sequence": expired, maybe taken, meanwhile
                    await self._kv.delete(self.key, last=self.revision)

        # Retried while NATS is away and while a restarted server's JetStream is not ready; past the TTL the lease
        # has expired by itself.
        with contextlib.suppress(HubError):
            await through_election(delete, f"releasing the slot lease {self.key}", self._ttl_s, nc=nc)

    async def _delete(self) -> None:
        async with self._lock:
            # The bucket unreachable (a leader is being elected): the lease expires by itself after its TTL.
            with contextlib.suppress(NatsError, TimeoutError):
                if self._js is None or self._freed is None:
                    await self._kv.delete(self.key, last=self.revision)
                    return
                # kv.delete's marker, written here to learn its revision from the acknowledgement (KV subject and
                # headers as NATS KV defines them, ADR-8): the next take of this slot names it, one request.
                acknowledged = await self._js.publish(
                    f"$KV.{SLOTS_BUCKET}.{self.key}",
                    b"",
                    headers={"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(self.revision)},
                )
                self._freed[self.key] = acknowledged.seq


# Releases waiting for NATS to come back (referenced so they are not collected before they run).
_releasing: set[asyncio.Task[None]] = set()


class SlotLeases:
    def __init__(self, js: JetStreamContext, *, ttl_s: float, replicas: int = 1, nc: NatsClient | None = None) -> None:
        self._js = js
        self._nc = nc
        self._ttl_s = ttl_s
        self._replicas = replicas
        self._kv: KeyValue | None = None
        # Slot key -> the revision of the delete marker this replica wrote when it freed that slot. A hint: taking
        # the slot again names it (one request) instead of kv.create's three for a key with a marker (the create is
        # refused, the key read, then updated); a slot taken meanwhile by another replica refuses the hint.
        self._freed: dict[str, int] = {}

    async def open(self) -> None:
        # File storage: a NATS restart keeps the leases of jobs still running.
        spec = BucketSpec(name=SLOTS_BUCKET, ttl_s=self._ttl_s, description="Which dispatcher holds which ComfyUI slot")
        self._kv = await open_bucket(self._js, spec, self._replicas)

    async def try_take(self, instance: str, slots: int, note: LeaseNote) -> Lease | None:
        """Take any free slot of `instance`, or None when all are held."""
        value = msgspec.json.encode(note)
        try:
            return await self._try_take(instance, slots, value)
        except NoStreamResponseError:
            await self.open()  # the bucket is gone (e.g. a new NATS server without our data): make it again
            return await self._try_take(instance, slots, value)

    async def _try_take(self, instance: str, slots: int, value: bytes) -> Lease | None:
        assert self._kv is not None
        keys = [slot_key(instance, slot) for slot in range(slots)]
        for slot in sorted(range(slots), key=lambda n: keys[n] not in self._freed):  # slots freed here first
            key = keys[slot]
            revision = await self._create(key, value)
            if revision is not None:
                return Lease(
                    self._kv,
                    key,
                    revision,
                    instance,
                    slot,
                    value,
                    self._nc,
                    ttl_s=self._ttl_s,
                    js=self._js,
                    freed=self._freed,
                )
        return None

    async def _create(self, key: str, value: bytes) -> int | None:
        """Write a lease at `key` if it is free: its revision, or None when it is held."""
        assert self._kv is not None
        marker = self._freed.pop(key, None)
        if marker is not None:
            with contextlib.suppress(KeyWrongLastSequenceError):  # taken (or expired) since: ask plainly
                return await self._kv.update(key, value, last=marker)
        try:
            return await self._kv.create(key, value)
        except KeyWrongLastSequenceError:
            return None

    async def hold(self, note: LeaseNote) -> Lease | None:
        """Claim a job this replica fetched but has not started (pull_affinity's window): like a slot lease it
        names the message's reply subject, so a restart of this replica after a crash hands the job back at once
        (reclaim) instead of leaving it to the redelivery after the take-over time. None if it is claimed already."""
        assert self._kv is not None
        key = f"held.{instance_key(note.replica)}.{instance_key(note.job_id)}"
        value = msgspec.json.encode(note)
        try:
            revision = await self._kv.create(key, value)
        except KeyWrongLastSequenceError:
            return None
        return Lease(self._kv, key, revision, "", -1, value, self._nc, ttl_s=self._ttl_s)

    async def orphans(self, replica: str, instances: Iterable[str]) -> list[tuple[Lease, LeaseNote]]:
        """The leases `replica` still holds, taken over by the caller (their revisions are the caller's now): the
        slot leases of `instances` with their instance and slot, the others (held jobs) with instance "". Only for a
        replica that has just taken its identity: no live process holds these leases (the one that did has died)."""
        assert self._kv is not None
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        slots_of = {instance_key(name): name for name in instances}
        found: list[tuple[Lease, LeaseNote]] = []
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                entry = await self._kv.get(key)
                note = _note_of(entry.value)
                if note is None or note.replica != replica or entry.revision is None:
                    continue
                where, _, slot = key.rpartition(".")
                instance = slots_of.get(where, "") if slot.isdigit() else ""
                value = entry.value or b""
                number = int(slot) if instance else -1
                lease = Lease(self._kv, key, entry.revision, instance, number, value, self._nc, ttl_s=self._ttl_s)
                found.append((lease, note))
        return found

    async def named_deliveries(self) -> set[tuple[str, int]]:
        """The job messages (consumer, stream sequence) that some lease names, whichever replica holds it."""
        assert self._kv is not None
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return set()
        named: set[tuple[str, int]] = set()
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                note = _note_of((await self._kv.get(key)).value)
                if note is not None and note.reply:
                    with contextlib.suppress(NotJSMessageError, ValueError):  # not an ack subject: names nothing
                        metadata = Msg(self._nc, reply=note.reply).metadata  # type: ignore[arg-type]
                        named.add((metadata.consumer, metadata.sequence.stream))
        return named

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


def _note_of(value: bytes | None) -> LeaseNote | None:
    try:
        return msgspec.json.decode(value, type=LeaseNote) if value else None
    except (msgspec.ValidationError, msgspec.DecodeError):  # a lease written by an older version
        return None
