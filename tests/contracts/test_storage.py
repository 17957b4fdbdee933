"""The output store writes objects as nats-py's Object Store does, so any Object Store client reads them."""

from __future__ import annotations

import io
import os
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from contracts.runtime.storage import CHUNK_SIZE, CHUNKS_PER_ASK, ObjectStoreOutputs
from contracts.streams import OUTPUTS_BUCKET
from hub_deploy.natsserver import NatsServer

SMALL_MAX_PAYLOAD = 256 * 1024


# CHUNKS_PER_ASK * CHUNK_SIZE + 5: a full batched ask, then the last chunk alone; 2 * CHUNKS_PER_ASK * CHUNK_SIZE:
# full batches only; (CHUNKS_PER_ASK + 2) * CHUNK_SIZE - 1: a full batch, then a batch that ends short of the ask
# when CHUNKS_PER_ASK > 2, else the last chunk alone.
@pytest.mark.parametrize(
    "size",
    [
        0,
        10,
        CHUNK_SIZE,
        CHUNKS_PER_ASK * CHUNK_SIZE + 5,
        2 * CHUNKS_PER_ASK * CHUNK_SIZE,
        (CHUNKS_PER_ASK + 2) * CHUNK_SIZE - 1,
    ],
)
async def test_a_saved_output_reads_back_here_and_through_nats_object_store(nc: NatsClient, size: int) -> None:
    await _saved_and_read_back(nc, size, CHUNK_SIZE)


async def test_a_server_with_a_smaller_max_payload_gets_chunks_it_takes(tmp_path: Path) -> None:
    """A NATS server configured with a max_payload below CHUNK_SIZE refuses such a publish: chunks are cut to it."""

    class SmallPayloadServer(NatsServer):
        def config_text(self) -> str:
            return super().config_text() + f"max_payload: {SMALL_MAX_PAYLOAD}\n"

    server = SmallPayloadServer(tmp_path / "jetstream", name="small-payload")
    server.start()
    try:
        client = await nats.connect(server.url)
        try:
            assert client.max_payload == SMALL_MAX_PAYLOAD < CHUNK_SIZE
            await _saved_and_read_back(client, 3 * SMALL_MAX_PAYLOAD + 7, SMALL_MAX_PAYLOAD)
        finally:
            await client.close()
    finally:
        server.stop()


async def _saved_and_read_back(nc: NatsClient, size: int, chunk_size: int) -> None:
    js = nc.jetstream()
    storage = ObjectStoreOutputs(js)
    data = os.urandom(size)
    saved = await storage.save(io.BytesIO(data), filename="out.png", content_type="image/png", job_id="job-1")
    assert saved.size == size and saved.kind == "image"
    assert await storage.read_all(saved.output_id) == data
    # nats-py checks the size, the chunk count and the SHA-256 digest the meta message states.
    read = await (await js.object_store(OUTPUTS_BUCKET)).get(saved.output_id)
    assert read.data == data
    assert read.info.chunks == -(-size // chunk_size)
    info = await storage.info(saved.output_id)
    assert info is not None and (info.filename, info.content_type, info.size) == ("out.png", "image/png", size)
    assert await storage.delete(saved.output_id)
    assert await storage.info(saved.output_id) is None
