"""Every reply on the bus is a `Reply`: exactly one of `result` or `error` is set."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from contracts.errors import ErrorCode, ErrorInfo, HubError

T = TypeVar("T")


class Reply(msgspec.Struct, Generic[T], kw_only=True, omit_defaults=True):
    result: T | None = None
    error: ErrorInfo | None = None

    def unwrap(self) -> T:
        """The result, or the error raised as `HubError` so it travels on unchanged."""
        if self.error is not None:
            raise HubError.from_info(self.error)
        if self.result is None:
            raise HubError(ErrorCode.INTERNAL, "the reply carried neither a result nor an error")
        return self.result


class Empty(msgspec.Struct, frozen=True):
    """A request or result with no fields (e.g. a health probe, an acknowledged delete)."""
