"""A style limited to render types may name only render types the registry has: one that names another would
never apply, silently (asked of the registry over NATS; no service imports another)."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.render_types import ListRenderTypes
from contracts.runtime.bus import call


async def check_render_types_exist(nc: NatsClient, names: list[str]) -> None:
    """Nothing when every name is a render type (or there is none); otherwise an error naming the first unknown
    one and the render types there are. When the registry cannot be asked, the style is not saved either."""
    if not names:
        return
    try:
        listed = await call(nc, endpoints.Registry.LIST, ListRenderTypes(include_disabled=True))
    except HubError as exc:
        raise HubError(
            ErrorCode.UNAVAILABLE,
            f"the render types this style is limited to cannot be checked now ({exc.info.message}); try again, "
            "or save it for every render type",
            field="style.render_types",
        ) from None
    known = sorted(rt.name for rt in listed.render_types)
    for index, name in enumerate(names):
        if name not in known:
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"there is no render type named '{name}' (there are: {', '.join(known) or 'none'}); a style limited "
                "to it would never apply: pick one of those, or leave the render types empty for every one",
                field=f"style.render_types[{index}]",
            )
