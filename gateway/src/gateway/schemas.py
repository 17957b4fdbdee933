"""JSON Schemas of the tools, generated from the contracts (msgspec), self-contained for MCP clients."""

from __future__ import annotations

from typing import Any

import msgspec


def object_schema(struct_type: type, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema of one Struct as a top-level object; nested Structs stay as `$defs` referenced from it."""
    schema = msgspec.json.schema(struct_type)
    defs: dict[str, Any] = schema.get("$defs", {})
    ref = schema.get("$ref", "")
    top = dict(defs.pop(ref.rsplit("/", 1)[-1])) if ref else dict(schema)
    if drop:
        top["properties"] = {k: v for k, v in top.get("properties", {}).items() if k not in drop}
        if "required" in top:
            top["required"] = [k for k in top["required"] if k not in drop]
    if defs:
        top["$defs"] = defs
    top.setdefault("type", "object")
    return top
