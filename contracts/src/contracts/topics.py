"""Every fan-out subject of the hub, declared once with the type of its messages.

A topic is published without a reply (`await publish(nc, topics.Registry.CHANGED, Empty())`) and heard by every
replica of every service that subscribes (`runtime.subscribe(topics.Registry.CHANGED, handler)`): no queue group,
nobody answers, at most once (NATS core). Request/reply subjects are in `contracts.endpoints`, JetStream subjects
in `contracts.streams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import msgspec

from contracts.envelope import Empty

M = TypeVar("M")

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Topic(Generic[M]):
    """A fan-out subject and its message type: a msgspec Struct (sent as JSON), `Empty` (sent as no payload at
    all: a bare announcement) or `str` (sent as UTF-8 text)."""

    subject: str
    message: type[M]

    def encode(self, message: M) -> bytes:
        if self.message is Empty:
            return b""
        if isinstance(message, str):
            return message.encode()
        return _encoder.encode(message)

    def decode(self, payload: bytes) -> M:
        """The message; raises msgspec.ValidationError or DecodeError when the payload is not one."""
        if self.message is Empty:
            return Empty()  # type: ignore[return-value]  # M is Empty here: a type checker cannot narrow a TypeVar
        if self.message is str:
            return payload.decode()  # type: ignore[return-value]  # M is str here (as above)
        return msgspec.json.decode(payload, type=self.message)


class Registry:
    # After every change to the render types, so others can drop what they cached.
    CHANGED: Final = Topic("hub.registry.changed", Empty)


class Prompt:
    # After every change to the styles (save, delete, import, bulk).
    STYLES_CHANGED: Final = Topic("hub.prompt.styles.changed", Empty)


class Gateway:
    # An API key changed (its id): every replica forgets what it cached of the key.
    KEYS_CHANGED: Final = Topic("hub.gateway.keys.changed", str)


class Dispatch:
    # A job to cancel (its id): the replica running it interrupts it.
    CANCEL: Final = Topic("hub.dispatch.control.cancel", str)
    # The ComfyUI instances changed: every replica reloads its pool.
    INSTANCES_CHANGED: Final = Topic("hub.dispatch.control.instances", Empty)
