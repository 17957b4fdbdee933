"""registry-service across restarts: the shipped render types are stored on the very first start only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
from nats.aio.client import Client as NatsClient
from test_registry_service import SHIPPED, get, history, listing, refused, resolve, save, tiny

from contracts import endpoints
from contracts.errors import ErrorCode
from contracts.messages.health import HealthRequest
from contracts.messages.render_types import DeleteRenderType, ResolveRenderType
from contracts.runtime.bus import call

R = endpoints.Registry


async def test_shipped_render_types_are_loaded_on_the_first_start_only(
    healthy_service, nc: NatsClient, tmp_path: Path
) -> None:
    first = await healthy_service("registry")
    names = {s.name for s in (await listing(nc)).render_types}
    assert names == SHIPPED
    health = await call(nc, endpoints.health("registry"), HealthRequest())
    checks = {c.name: c for c in health.checks}
    assert checks["render_types"].ok and checks["render_types"].detail == "5 render types, 5 enabled, default: sdxl"
    assert [v.note for v in (await history(nc, "sdxl")).versions] == ["shipped with the hub"]
    for name in ("video", "upscale"):
        await call(nc, endpoints.Registry.DELETE, DeleteRenderType(name=name))
    edited = await save(nc, msgspec.structs.replace(await get(nc, "flux"), description="our flux"))
    assert await first.stop() == 0

    second = await healthy_service("registry")
    assert {s.name for s in (await listing(nc)).render_types} == SHIPPED - {"video", "upscale"}
    assert await get(nc, "flux") == edited
    # Even an emptied registry stays empty: the admin removed them on purpose.
    for name in ("flux", "img2img", "sdxl"):  # the default goes last
        await call(nc, endpoints.Registry.DELETE, DeleteRenderType(name=name))
    assert await second.stop() == 0

    third = await healthy_service("registry")
    assert (await listing(nc)).render_types == []
    error = await refused(nc, R.RESOLVE, ResolveRenderType())
    assert (error.code, error.field) == (ErrorCode.NOT_FOUND, "render_type") and "no default" in error.message
    # The first render type saved into an empty registry becomes the default.
    assert (await save(nc, tiny("only-one"))).is_default
    assert (await resolve(nc)).render_type == "only-one"
    assert await third.stop() == 0

    with sqlite3.connect(tmp_path / "data" / "registry.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"render_type", "render_type_version", "registry_state"} <= tables
