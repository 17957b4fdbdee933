"""Fetching `input_image.url` without letting a caller reach the hub's own network (SSRF).

The host name is resolved here, every address it resolves to is checked, and the request is sent to the
checked address (the URL's name kept in the Host header and TLS SNI), so a name that resolves differently
a second time (DNS rebinding) cannot slip past. Redirects are followed by hand, each hop checked the same
way. Loopback, private, link-local, multicast, unspecified and other non-public addresses are refused
unless the admin allows the host or network in HUB_INPUT_URL_ALLOW.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin

import httpx
import msgspec

from contracts.errors import ErrorCode, HubError

FIELD = "input_image.url"
MAX_REDIRECTS = 5
FETCH_TIMEOUT_S = 20
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


def _refused(url: str, message: str, rule: str, **details: object) -> HubError:
    return HubError(
        ErrorCode.INVALID_REQUEST,
        f"input_image.url {url!r} refused: {message}",
        field=FIELD,
        details={"rule": rule, **details},
    )


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise HubError(
            ErrorCode.INVALID_REQUEST, f"input_image.url: the host {host!r} cannot be resolved ({exc})", field=FIELD
        ) from None
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is not part of the address.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


async def checked_address(url: httpx.URL, allow: UrlAllowlist) -> IPAddress:
    """The address to connect to for `url`, after every address its host resolves to passed the rules."""
    if url.scheme not in ("http", "https") or not url.host:
        raise _refused(str(url), "only http(s) URLs with a host are fetched", "scheme")
    addresses = await _resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
    if url.host.lower().rstrip(".") in allow.hosts:
        return addresses[0]
    for address in addresses:
        rule = refused_rule(address)
        if rule is not None and not allow.allows(address):
            how = "is" if str(address) == url.host else f"resolves to {address}, which is"
            article = "an" if rule[0] in "aeiou" else "a"
            raise _refused(
                str(url),
                f"{url.host} {how} {article} {rule} address; the hub does not fetch from its own network "
                "(an admin can allow hosts or networks with HUB_INPUT_URL_ALLOW)",
                rule,
                address=str(address),
            )
    return addresses[0]


def pinned_request(client: httpx.AsyncClient, url: httpx.URL, address: IPAddress) -> httpx.Request:
    """A GET of `url` sent to `address`: the name stays in the Host header and in TLS (SNI, certificate)."""
    host_header = url.netloc.decode("ascii").rpartition("@")[2]
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        "GET", url.copy_with(host=str(address)), headers={"Host": host_header}, extensions=extensions
    )


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise HubError(
                ErrorCode.INVALID_REQUEST, f"input_image.url: the image is larger than {max_bytes} bytes", field=FIELD
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_checked(client: httpx.AsyncClient, url: httpx.URL, allow: UrlAllowlist, max_bytes: int) -> bytes:
    for _hop in range(MAX_REDIRECTS + 1):
        request = pinned_request(client, url, await checked_address(url, allow))
        response = await client.send(request, stream=True)
        try:
            if response.is_redirect and "location" in response.headers:
                url = httpx.URL(urljoin(str(url), response.headers["location"]))
                continue
            if response.status_code != 200:
                raise HubError(
                    ErrorCode.INVALID_REQUEST, f"input_image.url answered HTTP {response.status_code}", field=FIELD
                )
            return await _read_limited(response, max_bytes)
        finally:
            await response.aclose()
    raise HubError(ErrorCode.INVALID_REQUEST, f"input_image.url: more than {MAX_REDIRECTS} redirects", field=FIELD)


async def fetch_input_url(raw_url: str, allow: UrlAllowlist, max_bytes: int) -> bytes:
    """The body of `raw_url` (at most `max_bytes`), fetched only from addresses the rules let through."""
    try:
        url = httpx.URL(raw_url)
    except httpx.InvalidURL as exc:
        raise HubError(ErrorCode.INVALID_REQUEST, f"input_image.url is not a valid URL ({exc})", field=FIELD) from None
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
            return await _fetch_checked(client, url, allow, max_bytes)
    except httpx.HTTPError as exc:
        raise HubError(ErrorCode.INVALID_REQUEST, f"input_image.url could not be fetched: {exc}", field=FIELD) from None
