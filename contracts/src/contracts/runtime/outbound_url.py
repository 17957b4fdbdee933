"""Outbound HTTP to URLs a caller names (input images, webhook callbacks) without letting a caller reach the hub's
own network (SSRF).

The host name is resolved here, every address it resolves to is checked, and the request is sent to the
checked address (the URL's name kept in the Host header and TLS SNI), so a name that resolves differently
a second time (DNS rebinding) cannot slip past. Loopback, private, link-local, multicast, unspecified and other
non-public addresses are refused unless the admin allows the host or network (HUB_INPUT_URL_ALLOW). Callers
follow redirects by hand, each hop checked the same way, or not at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import msgspec

from contracts.errors import ErrorCode, HubError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Checked in this order, so an address is named by its most specific rule.
REFUSED_RULES: tuple[tuple[str, str], ...] = (
    ("unspecified", "is_unspecified"),
    ("loopback", "is_loopback"),
    ("link-local", "is_link_local"),
    ("multicast", "is_multicast"),
    ("private", "is_private"),
    ("reserved", "is_reserved"),
)


class UrlAllowlist(msgspec.Struct, frozen=True, kw_only=True):
    """Hosts (exact names) and networks the admin allows even though they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> UrlAllowlist:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


PUBLIC_ONLY = UrlAllowlist()  # the default: nothing but public addresses


def refused_rule(address: IPAddress) -> str | None:
    """The rule that refuses `address` (e.g. "loopback"), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for rule, attribute in REFUSED_RULES:
        if getattr(address, attribute):
            return rule
    return None if address.is_global else "non-public"


def _refused(url: str, field: str, message: str, rule: str, **details: object) -> HubError:
    return HubError(
        ErrorCode.INVALID_REQUEST, f"{field} {url!r} refused: {message}", field=field, details={"rule": rule, **details}
    )


async def _resolve(host: str, port: int, field: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise HubError(
            ErrorCode.INVALID_REQUEST, f"{field}: the host {host!r} cannot be resolved ({exc})", field=field
        ) from None
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is not part of the address.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


async def checked_address(url: httpx.URL, allow: UrlAllowlist, *, field: str, variable: str) -> IPAddress:
    """The address to connect to for `url`, after every address its host resolves to passed the rules; a refusal
    names the request's `field` and the allowlist `variable` an admin sets."""
    if url.scheme not in ("http", "https") or not url.host:
        raise _refused(str(url), field, "only http(s) URLs with a host are fetched", "scheme")
    addresses = await _resolve(url.host, url.port or (443 if url.scheme == "https" else 80), field)
    if url.host.lower().rstrip(".") in allow.hosts:
        return addresses[0]
    for address in addresses:
        rule = refused_rule(address)
        if rule is not None and not allow.allows(address):
            how = "is" if str(address) == url.host else f"resolves to {address}, which is"
            article = "an" if rule[0] in "aeiou" else "a"
            raise _refused(
                str(url),
                field,
                f"{url.host} {how} {article} {rule} address; the hub does not fetch from its own network "
                f"(an admin can allow hosts or networks with {variable})",
                rule,
                address=str(address),
            )
    return addresses[0]


def pinned_request(
    client: httpx.AsyncClient,
    url: httpx.URL,
    address: IPAddress,
    *,
    method: str = "GET",
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Request:
    """A request for `url` sent to `address`: the name stays in the Host header and in TLS (SNI, certificate)."""
    host_header = url.netloc.decode("ascii").rpartition("@")[2]
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        method,
        url.copy_with(host=str(address)),
        headers={**(headers or {}), "Host": host_header},
        content=content,
        extensions=extensions,
    )
