"""What each ComfyUI instance can run (its node classes and model files), kept in a KV bucket by the replica that
read it last, so a restarted dispatcher (or another replica) places jobs at once instead of reading `/object_info`
and every model folder of every instance first (a dozen requests an instance, hundreds of kilobytes from a real
ComfyUI: the largest part of a dispatcher's restart). Whether an instance is up is still asked before a job is
placed; what was recalled is read again by the next health probe, right after the start."""

from __future__ import annotations

import time
from typing import Final

import msgspec
from nats.js.errors import KeyNotFoundError

from contracts.runtime.bus import KvStore
from contracts.runtime.logs import get_logger
from contracts.streams import BucketSpec
from dispatch_service.leases import instance_key

log = get_logger("pool")

# The health loop reads each instance again this often. A reading is recalled only while it is this fresh, so a
# dispatcher restarted after a crash always finds one; a hub started after a long stop reads every instance anew.
CAPABILITY_REFRESH_S: Final = 300.0
CAPABILITIES: Final = BucketSpec(
    name="hub-dispatch-capabilities",
    ttl_s=2 * CAPABILITY_REFRESH_S,
    description="The node classes and model files of each ComfyUI instance, as a dispatcher last read them",
)


class Capabilities(msgspec.Struct, frozen=True):
    base_url: str  # of the instance read: an instance given another address is read anew
    node_classes: list[str]
    models: dict[str, list[str]]  # by folder
    read_at: float  # wall clock


class CapabilityMemory(KvStore):
    """The bucket above; a failure to read or write it only costs a fresh reading."""

    bucket_spec = CAPABILITIES

    async def recall(self, instance: str, base_url: str) -> Capabilities | None:
        """The last reading of `instance` at `base_url`, when fresh enough to place jobs on."""
        if self._opened is None:
            return None
        try:
            entry = await self._opened.get(instance_key(instance))
            capabilities = msgspec.json.decode(entry.value or b"", type=Capabilities)
        except KeyNotFoundError:
            return None
        except Exception as exc:
            log.warning("could not recall what an instance can run", instance=instance, error=str(exc) or repr(exc))
            return None
        fresh = time.time() - capabilities.read_at < CAPABILITY_REFRESH_S
        return capabilities if fresh and capabilities.base_url == base_url else None

    async def remember(self, instance: str, capabilities: Capabilities) -> None:
        if self._opened is None:
            return
        try:
            await self._opened.put(instance_key(instance), msgspec.json.encode(capabilities))
        except Exception as exc:
            log.warning("could not store what an instance can run", instance=instance, error=str(exc) or repr(exc))
