"""The output store writes objects as nats-py's Object Store does, so any Object Store client reads them."""

from __future__ import annotations

import io
import os

import pytest
from nats.aio.client import Client as NatsClient

from contracts.runtime.storage import CHUNK_SIZE, ObjectStoreOutputs
from contracts.streams import OUTPUTS_BUCKET


# 2 * CHUNK_SIZE + 5: one batched ask; 8 * CHUNK_SIZE + 1 and 11 * CHUNK_SIZE: a full batch of CHUNKS_PER_ASK, then
# the last chunk alone or a shorter batch.
@pytest.mark.parametrize("size", [0, 10, CHUNK_SIZE, 2 * CHUNK_SIZE + 5, 8 * CHUNK_SIZE + 1, 11 * CHUNK_SIZE])
async def test_a_saved_output_reads_back_here_and_through_nats_object_store(nc: NatsClient, size: int) -> None:
    js = nc.jetstream()
    storage = ObjectStoreOutputs(js)
    data = os.urandom(size)
    saved = await storage.save(io.BytesIO(data), filename="out.png", content_type="image/png", job_id="job-1")
    assert saved.size == size and saved.kind == "image"
    assert await storage.read_all(saved.output_id) == data
    # nats-py checks the size, the chunk count and the SHA-256 digest the meta message states.
    read = await (await js.object_store(OUTPUTS_BUCKET)).get(saved.output_id)
    assert read.data == data
    assert read.info.chunks == -(-size // CHUNK_SIZE)
    info = await storage.info(saved.output_id)
    assert info is not None and (info.filename, info.content_type, info.size) == ("out.png", "image/png", size)
    assert await storage.delete(saved.output_id)
    assert await storage.info(saved.output_id) is None
