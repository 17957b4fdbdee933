"""Base classes of every message, so all requests and records behave alike on the wire."""

from __future__ import annotations

import msgspec


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A request to a service. Unknown fields are an error naming the field, so typos never pass silently."""


class Record(msgspec.Struct, kw_only=True):
    """Data a service returns or publishes. Unknown fields are ignored, so a newer sender can add fields."""
