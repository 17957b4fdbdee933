"""Generated outputs (images, videos, …) behind one storage interface.

The dispatcher writes them, the gateway serves them, the retention run deletes them. The default backend is
a JetStream Object Store bucket, so outputs live wherever NATS lives (replicated on a cluster) and need no
shared disk. Output ids are unguessable (128 random bits).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import BinaryIO, Protocol

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ObjectInfo, ObjectMetaOptions, ObjectStoreConfig, PubAck, RawStreamMsg, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_META_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import GenerationRequest, InputImage, OutputFile
from contracts.messages.render_types import OutputKind
from contracts.runtime.bus import BucketStore, KvStore, direct_batch
from contracts.streams import OUTPUTS_BUCKET, PREVIEWS_BUCKET, PREVIEWS_KEPT_S, PREVIEWS_MAX_BYTES, BucketSpec

# An output is stored in chunks of this size, each a JetStream publish (one in flight at a time, each acknowledged)
# and a message a read gets: 512 KiB makes a 1024 px photograph-like PNG (~2.2 MiB) 5 chunks instead of the 18 of
# nats-py's 128 KiB default. Half the server's default max_payload (1 MiB), so a chunk with the headers a read's answer
# carries stays far inside it; a server whose max_payload is lower gets chunks of its max_payload (ObjectStoreOutputs).
CHUNK_SIZE = 512 * 1024
CHUNKS_PER_ASK = 2  # a read asks for this many chunks at once (1 MiB)
_ROLLUP_SUBJECT = {"Nats-Rollup": "sub"}  # a meta message replaces the object's earlier ones (as nats-py writes it)
OUTPUTS_STREAM = OBJ_STREAM_TEMPLATE.format(bucket=OUTPUTS_BUCKET)


def new_output_id() -> str:
    return secrets.token_urlsafe(16)


_OUTPUT_KINDS: dict[str, OutputKind] = {"image": "image", "video": "video", "audio": "audio"}


def output_kind(content_type: str) -> OutputKind:
    return _OUTPUT_KINDS.get(content_type.split("/", 1)[0], "other")


def decode_base64_image(text: str, field: str) -> bytes:
    """The bytes of a base64 image (a `data:` URL prefix is allowed), or an error naming `field`."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HubError(ErrorCode.INVALID_REQUEST, f"{field} is not valid base64", field=field) from None


@contextlib.asynccontextmanager
async def input_image_staged(
    storage: OutputStorage,
    generation: GenerationRequest,
    check: Callable[[bytes, str], Awaitable[object]] | None = None,
) -> AsyncIterator[GenerationRequest]:
    """`generation` with its base64 input image moved into the store (referred to by `stored_id`) while the block
    runs: a NATS message is capped by the server's max_payload (1 MiB by default), an input image may be 25 MiB.
    The dispatcher copies the image to the job before it answers a submit, so the staged copy is removed after.

    `check(data, field)` runs on the decoded bytes first: the dispatcher only sees the staged `stored_id`, so a
    refusal there would name the wrong field."""
    image = generation.input_image
    if image is None or not image.base64 or image.url or image.stored_id:
        yield generation  # nothing to stage (or an ambiguous image: the dispatcher says so, naming the fields)
        return
    data = decode_base64_image(image.base64, "input_image.base64")
    if check is not None:
        await check(data, "input_image.base64")
    stored = await storage.save(
        io.BytesIO(data),
        filename=image.filename or "input-image",
        content_type="application/octet-stream",  # the dispatcher checks what the bytes are
        job_id="staged-input",
    )
    try:
        staged = InputImage(stored_id=stored.output_id, filename=image.filename)
        yield msgspec.structs.replace(generation, input_image=staged)
    finally:
        await storage.delete(stored.output_id)


class OutputStorage(Protocol):
    async def save(self, source: BinaryIO, *, filename: str, content_type: str, job_id: str) -> OutputFile: ...
    async def info(self, output_id: str) -> OutputFile | None: ...
    def read(self, output_id: str) -> AsyncIterator[bytes]: ...
    async def delete(self, output_id: str) -> bool: ...


def _sequence(chunk: RawStreamMsg | Msg) -> int:
    """The stream sequence of a chunk read by a plain direct get (`seq`) or a batched one (its header)."""
    if isinstance(chunk, RawStreamMsg) and chunk.seq is not None:
        return chunk.seq
    return int((chunk.headers or {})["Nats-Sequence"])


class _Headers(msgspec.Struct):
    filename: str
    content_type: str
    job_id: str


class ObjectStoreOutputs(BucketStore[ObjectStore]):
    """Outputs in a JetStream Object Store bucket (file storage, `replicas` copies)."""

    bucket_spec = BucketSpec(name=OUTPUTS_BUCKET, ttl_s=0, description="Generated outputs")

    @property
    def _nc(self) -> NatsClient:
        """The connection under the JetStream context (nats-py keeps it there), for batched direct gets."""
        nc: NatsClient = self._js._nc
        return nc

    async def _find_or_create(self) -> ObjectStore:
        try:
            store = await self._js.object_store(OUTPUTS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            store = await self._create()
        await self._allow_direct_reads()
        return store

    async def _create(self) -> ObjectStore:
        config = ObjectStoreConfig(
            description=self.bucket_spec.description, storage=StorageType.FILE, replicas=self._replicas
        )
        try:
            return await self._js.create_object_store(OUTPUTS_BUCKET, config=config)
        except BadRequestError:  # another replica created it meanwhile
            return await self._js.object_store(OUTPUTS_BUCKET)

    async def _allow_direct_reads(self) -> None:
        """Outputs are read by direct gets (no consumer per read); a bucket made by an older hub (or nats-py)
        may not allow them yet, so switch it on (idempotent; every replica may race to do this)."""
        config = (await self._js.stream_info(OUTPUTS_STREAM)).config
        if not config.allow_direct:
            config.allow_direct = True
            await self._js.update_stream(config)

    async def save(self, source: BinaryIO, *, filename: str, content_type: str, job_id: str) -> OutputFile:
        """Store from a file-like object, chunk by chunk (the file is never loaded whole).

        The object is written as nats-py's ObjectStore.put writes it (chunks on a subject of their own, then the
        meta message, rolled up), without its two costs that a new output does not need: a lookup of an earlier
        object of that name (an output id is new) and a thread hop per chunk read (the outputs come from memory or
        a spooled temporary file). The last chunk and the meta message are sent together and their acknowledgements
        awaited together (an image is one chunk: one round trip instead of two); should either fail, the chunks and
        the meta message are purged."""
        await self._bucket()
        chunk_size = min(CHUNK_SIZE, self._nc.max_payload)
        output_id = new_output_id()
        nuid = secrets.token_hex(11)
        chunk_subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=OUTPUTS_BUCKET, obj=nuid)
        name = base64.urlsafe_b64encode(output_id.encode()).decode()
        meta_subject = OBJ_META_PRE_TEMPLATE.format(bucket=OUTPUTS_BUCKET, obj=name)
        digest = hashlib.sha256()
        size = chunks = 0
        sent: list[asyncio.Future[PubAck]] = []
        try:
            chunk = source.read(chunk_size)
            while chunk:
                digest.update(chunk)
                size += len(chunk)
                chunks += 1
                following = source.read(chunk_size)
                if following:  # one chunk in flight at a time: a large output is never read into memory whole
                    await self._js.publish(chunk_subject, chunk)
                else:  # a task, so that it is sent before the meta message (tasks start in their order)
                    sent.append(asyncio.ensure_future(self._js.publish(chunk_subject, chunk)))
                chunk = following
            headers = _Headers(filename=filename, content_type=content_type, job_id=job_id)
            info = ObjectInfo(
                name=output_id,
                description=msgspec.json.encode(headers).decode(),
                options=ObjectMetaOptions(max_chunk_size=chunk_size),
                bucket=OUTPUTS_BUCKET,
                nuid=nuid,
                size=size,
                chunks=chunks,
                mtime=datetime.now(UTC).isoformat(),
                digest=f"SHA-256={base64.urlsafe_b64encode(digest.digest()).decode()}",
            )
            meta = msgspec.json.encode(info.as_dict())
            sent.append(asyncio.ensure_future(self._js.publish(meta_subject, meta, headers=_ROLLUP_SUBJECT)))
            for outcome in await asyncio.gather(*sent, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            for publish in sent:
                publish.cancel()
            with contextlib.suppress(Exception):  # the error that matters is the one raised
                await self._js.purge_stream(OUTPUTS_STREAM, subject=chunk_subject)
                await self._js.purge_stream(OUTPUTS_STREAM, subject=meta_subject)
            raise
        return OutputFile(
            output_id=output_id, content_type=content_type, size=size, filename=filename, kind=output_kind(content_type)
        )

    async def info(self, output_id: str) -> OutputFile | None:
        located = await self._object_info(output_id)
        if located is None:
            return None
        headers = msgspec.json.decode(located.description or "{}", type=_Headers)
        return OutputFile(
            output_id=output_id,
            content_type=headers.content_type,
            size=int(located.size or 0),
            filename=headers.filename,
            kind=output_kind(headers.content_type),
        )

    async def read(self, output_id: str) -> AsyncIterator[bytes]:
        """The bytes of an output, chunk by chunk, by direct gets: no consumer per read (nats-server limits
        consumers, and a read at every image request would soon reach that limit). A chunk that is gone (the
        output was deleted meanwhile) raises NOT_FOUND."""
        located = await self._object_info(output_id)
        if located is None:
            raise HubError(ErrorCode.NOT_FOUND, f"no output `{output_id}` (it may have been deleted)")
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=OUTPUTS_BUCKET, obj=located.nuid)
        seq, left = 1, int(located.chunks or 0)
        while left > 0:
            # A few chunks per ask (batched direct get): one request per CHUNKS_PER_ASK chunks, memory bounded. The
            # last one alone is a plain direct get: its answer needs no end-of-batch marker.
            chunks: list[RawStreamMsg | Msg]
            if left == 1:
                last = await self._direct_get(subject, seq)
                chunks = [] if last is None else [last]
            else:
                found, _ = await direct_batch(self._nc, OUTPUTS_STREAM, subject, seq, min(left, CHUNKS_PER_ASK))
                chunks = list(found)
            if not chunks:
                raise HubError(ErrorCode.NOT_FOUND, f"output `{output_id}` was deleted while being read")
            for chunk in chunks[:left]:
                seq, left = _sequence(chunk) + 1, left - 1
                yield chunk.data or b""

    async def _object_info(self, output_id: str) -> ObjectInfo | None:
        """The object's meta message (its last one), or None for an unknown or deleted output."""
        name = base64.urlsafe_b64encode(output_id.encode()).decode()
        message = await self._direct_get(OBJ_META_PRE_TEMPLATE.format(bucket=OUTPUTS_BUCKET, obj=name))
        if message is None:
            return None
        info = ObjectInfo.from_response(msgspec.json.decode(message.data or b"{}"))
        return None if info.deleted else info

    async def _direct_get(self, subject: str, after_seq: int | None = None) -> RawStreamMsg | None:
        """The last message on `subject`, or with `after_seq` the first at or after that sequence; None if none.
        A direct get is answered by any replica of the stream, without a consumer."""
        await self._bucket()
        try:
            if after_seq is None:
                return await self._js.get_last_msg(OUTPUTS_STREAM, subject, direct=True)
            return await self._js.get_msg(OUTPUTS_STREAM, seq=after_seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return None
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            raise HubError(ErrorCode.UNAVAILABLE, f"the output store does not answer ({exc!r}); is NATS up?") from exc

    async def read_all(self, output_id: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(output_id)])

    async def delete(self, output_id: str) -> bool:
        store = await self._bucket()
        try:
            await store.delete(output_id)
        except (ObjectNotFoundError, NotFoundError):
            return False
        return True


class PreviewStore(KvStore):
    """Renditions of image outputs that ComfyUI re-encoded as JPEG (its `/view?preview=`), by output id: the
    dispatcher keeps them for jobs that asked (`GenerationRequest.inline_previews`, set by the MCP door), the gateway
    makes its inline previews from them: a JPEG decodes at a fraction of its size (DCT scaling), where the output's
    PNG must be inflated whole (~17 ms for a 1024 px photograph on one core). Kept for PREVIEWS_KEPT_S and at most
    PREVIEWS_MAX_BYTES in all: past either the gateway reads the output itself, as for an output without one."""

    bucket_spec = BucketSpec(
        name=PREVIEWS_BUCKET,
        ttl_s=PREVIEWS_KEPT_S,
        max_bytes=PREVIEWS_MAX_BYTES,
        description="JPEG renditions of image outputs, for inline previews",
    )

    async def save(self, output_id: str, data: bytes) -> None:
        await (await self._bucket()).put(output_id, data)

    async def load(self, output_id: str) -> bytes | None:
        """The rendition of an output; None when there is none (never made, refused, expired). Raises what nats-py
        raises when NATS does not answer (the caller previews from the output then)."""
        try:
            entry = await (await self._bucket()).get(output_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        return entry.value or None
