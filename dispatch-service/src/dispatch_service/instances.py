"""ComfyUI instances: validation of their configuration (stored through store.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.instances import Instance
from dispatch_service import store


def normalize_base_url(url: str) -> str:
    """`http(s)://host[:port][/prefix]` without a trailing slash, or an error naming `base_url`."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"base_url {url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8188",
            field="instance.base_url",
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise HubError(
            ErrorCode.INVALID_REQUEST, f"base_url {url!r} has an invalid port", field="instance.base_url"
        ) from None
    if parts.query or parts.fragment:
        raise HubError(
            ErrorCode.INVALID_REQUEST, "base_url must not have a query or fragment", field="instance.base_url"
        )
    return text.rstrip("/")


def validate_auth_header(header: str | None) -> str | None:
    if header is None or not header.strip():
        return None
    name, sep, value = header.partition(":")
    if not sep or not name.strip() or not value.strip() or "\n" in header or "\r" in header:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            "auth_header must look like 'Authorization: Bearer <token>'",
            field="instance.auth_header",
        )
    return f"{name.strip()}: {value.strip()}"


def masked(instance: Instance) -> Instance:
    """The instance as shown to callers: the auth header's secret is hidden."""
    if not instance.auth_header:
        return instance
    name = instance.auth_header.split(":", 1)[0]
    return msgspec.structs.replace(instance, auth_header=f"{name}: ***")


async def list_instances() -> list[Instance]:
    return await store.instances()


async def get_instance(name: str) -> Instance:
    found = await store.find_instance(name)
    if found is None:
        names = [i.name for i in await list_instances()]
        raise HubError(ErrorCode.NOT_FOUND, f"no instance named {name!r}", field="name", details={"valid": names})
    return found


async def save_instance(instance: Instance, original_name: str | None) -> Instance:
    """Create (original_name None) or update an instance, in one transaction."""
    base_url = normalize_base_url(instance.base_url)
    auth_header = validate_auth_header(instance.auth_header)
    async with store.instance_transaction():
        clash = await store.find_instance(instance.name)
        if original_name is None:
            if clash is not None:
                raise HubError(
                    ErrorCode.CONFLICT, f"an instance named {instance.name!r} exists already", field="instance.name"
                )
            await store.insert_instance(msgspec.structs.replace(instance, base_url=base_url, auth_header=auth_header))
        else:
            current = await store.find_instance(original_name)
            if current is None:
                raise HubError(ErrorCode.NOT_FOUND, f"no instance named {original_name!r}", field="original_name")
            if clash is not None and instance.name != original_name:
                raise HubError(
                    ErrorCode.CONFLICT, f"an instance named {instance.name!r} exists already", field="instance.name"
                )
            # An edit that shows the masked header keeps the stored secret.
            if auth_header and auth_header.endswith(": ***"):
                auth_header = current.auth_header
            stored = msgspec.structs.replace(instance, base_url=base_url, auth_header=auth_header)
            await store.update_instance(original_name, stored)
    return await get_instance(instance.name)


async def delete_instance(name: str) -> None:
    await get_instance(name)
    await store.delete_instance(name)
