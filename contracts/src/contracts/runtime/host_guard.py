"""Host and Origin allowlists in front of the hub's HTTP servers (gateway and admin UI): the DNS-rebinding defence
the MCP transport specification asks for.

A page on an attacker's domain whose name is made to resolve to 127.0.0.1 (or to an internal address) talks to
the hub with `Host: evil.example` and `Origin: http://evil.example`: comparing the two proves nothing. So the
`Host` must be one of the names the hub is known by (loopback names and addresses, the address it listens on,
and what the admin lists in HUB_<SERVICE>_ALLOWED_HOSTS), and an `Origin`, when a browser sends one, must be a
page on one of those names or an origin the admin lists in HUB_<SERVICE>_ALLOWED_ORIGINS. Anything else is a 403
naming the variable to set. Health probes (/healthz, /readyz) pass without the check: they are asked by
orchestrators under whatever address they see, and tell nothing.

Needs no configuration import: the config loader uses the parsers below to check the variables at start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

if TYPE_CHECKING:
    from contracts.runtime.config import Settings

ANY = "*"
LOOPBACK_NAMES = ("localhost",)
WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")
PROBE_PATHS = ("/healthz", "/readyz")
DEFAULT_PORTS = {"http": 80, "https": 443}

# (path, message, header) -> (content type, body) of the 403 answer
Refusal = Callable[[str, str, str], tuple[bytes, bytes]]


def host_name(value: str) -> str | None:
    """The host part of a `Host` header or an allowlist entry, lower case, IPv6 without brackets, no trailing dot;
    None when it is not a host (a scheme, a path, a bad port)."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@?# "):
        return None
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return address if _is_ip(address) else None
    if value.count(":") > 1:
        return value if _is_ip(value) else None  # a bare IPv6 address (allowlists only; a Host brackets it)
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    return name.rstrip(".") or None


def normalized_origin(value: str) -> str | None:
    """`scheme://host[:port]` in lower case without the scheme's default port, or None when `value` is not an
    http(s) origin. The opaque origin `null` stays `null`."""
    value = value.strip().lower()
    if value == "null":
        return value
    parts = urlsplit(value)
    if parts.scheme not in DEFAULT_PORTS or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    name = host_name(parts.netloc) if "@" not in parts.netloc else None
    if name is None:
        return None
    shown = f"[{name}]" if ":" in name else name
    return f"{parts.scheme}://{shown}" + (f":{port}" if port and port != DEFAULT_PORTS[parts.scheme] else "")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _same_name(name: str, entry: str) -> bool:
    if entry.startswith("*."):
        return name.endswith(entry[1:])
    if _is_ip(name) and _is_ip(entry):
        return ipaddress.ip_address(name) == ipaddress.ip_address(entry)
    return name == entry


@dataclass(frozen=True)
class HostPolicy:
    """The names (`*.example.com` for subdomains, `*` for any) and origins a server accepts, beyond loopback."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    hosts_variable: str
    origins_variable: str

    def name_allowed(self, name: str) -> bool:
        """A loopback name or address, or one the admin listed (not `*`)."""
        if name in LOOPBACK_NAMES or (_is_ip(name) and ipaddress.ip_address(name).is_loopback):
            return True
        return any(_same_name(name, entry) for entry in self.hosts if entry != ANY)

    def host_problem(self, host: str | None) -> str | None:
        if ANY in self.hosts:
            return None
        name = host_name(host) if host else None
        if name is not None and self.name_allowed(name):
            return None
        shown = f"Host {host!r}" if host else "a request without a Host header"
        example = name if name else "hub.example.com"
        return (
            f"{shown} is not allowed (DNS-rebinding protection): this server answers only to loopback names and "
            f"the names in {self.hosts_variable}; if clients reach it under this name, add it there "
            f"(comma-separated, e.g. {self.hosts_variable}={example})"
        )

    def origin_problem(self, origin: str | None) -> str | None:
        if origin is None or ANY in self.origins:
            return None
        normalized = normalized_origin(origin)
        if normalized is not None and normalized in self.origins:
            return None
        if normalized not in (None, "null") and self.name_allowed(host_name(urlsplit(normalized).netloc) or ""):
            return None  # a page served under one of the server's own names
        return (
            f"Origin {origin!r} is not allowed: browser pages may call this server only from its own names "
            f"({self.hosts_variable}) or the origins in {self.origins_variable}; to let this page call it, add it "
            f"there (e.g. {self.origins_variable}={normalized or 'https://app.example.com'})"
        )


def policy_of(settings: Settings, service: str) -> HostPolicy:
    """The policy of the gateway or the UI: its variables, plus the address it listens on when that is one
    address (not a wildcard bind)."""
    prefix = f"HUB_{service.upper()}_ALLOWED_"
    hosts: tuple[str, ...] = getattr(settings, f"{service}_allowed_hosts")
    bind = getattr(settings, f"{service}_host")
    bound = host_name(bind) if bind not in WILDCARD_BINDS else None
    return HostPolicy(
        hosts=(*hosts, bound) if bound else hosts,
        origins=getattr(settings, f"{service}_allowed_origins"),
        hosts_variable=f"{prefix}HOSTS",
        origins_variable=f"{prefix}ORIGINS",
    )


def json_refusal(path: str, message: str, header: str) -> tuple[bytes, bytes]:
    """The hub's JSON error envelope."""
    body = {"error": {"code": "forbidden", "message": message, "field": header, "details": None}}
    return b"application/json", msgspec.json.encode(body)


def text_refusal(path: str, message: str, header: str) -> tuple[bytes, bytes]:
    return b"text/plain; charset=utf-8", message.encode() + b"\n"


class HostGuard:
    """ASGI middleware: refuse (403) a request whose Host or Origin is not allowed, before the app sees it."""

    def __init__(self, app: Any, policy: HostPolicy, *, refusal: Refusal = json_refusal, log: Any = None) -> None:
        self._app = app
        self._policy = policy
        self._refusal = refusal
        self._log = log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PROBE_PATHS:
            await self._app(scope, receive, send)
            return
        host = origin = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
        problem = self._policy.host_problem(host)
        header = "Host"
        if problem is None:
            problem, header = self._policy.origin_problem(origin), "Origin"
        if problem is None:
            await self._app(scope, receive, send)
            return
        if self._log is not None:
            self._log.warning("request refused", header=header, host=host, origin=origin, path=scope["path"])
        await _refuse(send, scope, *self._refusal(scope["path"], problem, header))


async def _refuse(send: Callable[[dict[str, Any]], Awaitable[None]], scope: Any, kind: bytes, body: bytes) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
