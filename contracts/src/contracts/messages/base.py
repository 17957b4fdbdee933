"""Base classes of every message, so all requests and records behave alike on the wire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A request to a service. Unknown fields are an error naming the field, so typos never pass silently."""


class Record(msgspec.Struct, kw_only=True):
    """Data a service returns or publishes. Unknown fields are ignored, so a newer sender can add fields."""


def struct_from(target: type[S], source: object, **given: Any) -> S:
    """A `target` holding the fields of `source` (a Struct, any object, or a mapping such as a database row) that
    have its field names, with `given` for those it lacks or that change on the way (a list stored as text, a field
    renamed). What neither holds takes the target's default; a required field in neither is a TypeError, as with
    the constructor. Like the constructor, it checks no types: `msgspec.convert` does, for data from outside."""
    names = [name for name in target.__struct_fields__ if name not in given]
    if isinstance(source, Mapping):
        carried = {name: source[name] for name in names if name in source}
    else:
        carried = {name: getattr(source, name) for name in names if hasattr(source, name)}
    return target(**carried, **given)
