"""input_image.url is fetched only from public addresses unless the admin allows more (SSRF guard).

A real HTTP server on 127.0.0.1 stands in for an internal service the hub must not reach for a caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from doubles.png import encode_solid_png

from contracts.errors import HubError
from contracts.runtime.config import ConfigError, load_settings
from contracts.runtime.outbound_url import PUBLIC_ONLY, UrlAllowlist, refused_rule
from dispatch_service.input_url import fetch_input_url

PICTURE = encode_solid_png(8, 8, (1, 2, 3))


@dataclass
class InternalService:
    port: int = 0
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def internal() -> AsyncIterator[InternalService]:
    service = InternalService()

    async def handle(request: web.Request) -> web.StreamResponse:
        service.hits.append((request.path, request.headers.get("Host", "")))
        if request.path.startswith("/redirect"):
            raise web.HTTPFound(request.query["to"])
        return web.Response(body=PICTURE, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    service.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield service
    await runner.cleanup()


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_each_address_is_named_by_the_rule_that_refuses_it(address: str, rule: str | None) -> None:
    assert refused_rule(ipaddress.ip_address(address)) == rule


async def refusal(url: str, allow: UrlAllowlist = PUBLIC_ONLY) -> HubError:
    with pytest.raises(HubError) as raised:
        await fetch_input_url(url, allow, 1024 * 1024)
    assert raised.value.info.field == "input_image.url"
    return raised.value


async def test_loopback_is_refused_by_default_and_nothing_is_sent(internal: InternalService) -> None:
    error = await refusal(f"{internal.url}/system_stats")
    assert error.info.details == {"rule": "loopback", "address": "127.0.0.1"}
    assert "loopback" in error.info.message and "HUB_INPUT_URL_ALLOW" in error.info.message
    # A name is judged by the address it resolves to.
    error = await refusal(f"http://localhost:{internal.port}/system_stats")
    assert error.info.details == {"rule": "loopback", "address": "127.0.0.1"}
    assert "resolves to 127.0.0.1" in error.info.message
    for url, rule in (
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://0.0.0.0:8188/", "unspecified"),
    ):
        assert (await refusal(url)).info.details["rule"] == rule  # type: ignore[index]
    assert internal.hits == []


async def test_an_allowed_network_or_host_is_fetched_with_its_name_kept(internal: InternalService) -> None:
    assert await fetch_input_url(f"{internal.url}/a.png", UrlAllowlist.parse(("127.0.0.0/8",)), 1 << 20) == PICTURE
    by_name = UrlAllowlist.parse(("LOCALHOST",))
    assert await fetch_input_url(f"http://localhost:{internal.port}/b.png", by_name, 1 << 20) == PICTURE
    # Sent to the address checked, with the URL's own name in the Host header.
    assert internal.hits == [("/a.png", f"127.0.0.1:{internal.port}"), ("/b.png", f"localhost:{internal.port}")]
    # Allowing one network does not allow another.
    error = await refusal("http://192.168.0.1/", UrlAllowlist.parse(("127.0.0.0/8",)))
    assert error.info.details == {"rule": "private", "address": "192.168.0.1"}


async def test_every_redirect_is_checked_before_it_is_followed(internal: InternalService) -> None:
    allow = UrlAllowlist.parse(("127.0.0.1",))
    for target, rule in (("http://169.254.169.254/latest/meta-data/", "link-local"), ("http://[::1]/", "loopback")):
        error = await refusal(f"{internal.url}/redirect?to={target}", allow)
        assert error.info.details["rule"] == rule  # type: ignore[index]
    # A redirect to an allowed place is followed; the size limit holds for what it returns.
    relative = f"{internal.url}/redirect?to=/c.png"
    assert await fetch_input_url(relative, allow, 1 << 20) == PICTURE
    with pytest.raises(HubError, match="larger than 16 bytes"):
        await fetch_input_url(relative, allow, 16)
    # The refused targets were never asked; the allowed one was, twice.
    assert [path for path, _ in internal.hits] == [
        "/redirect",
        "/redirect",
        "/redirect",
        "/c.png",
        "/redirect",
        "/c.png",
    ]


async def test_other_schemes_and_unknown_hosts_are_refused_clearly() -> None:
    assert (await refusal("file:///etc/passwd")).info.details == {"rule": "scheme"}
    assert "cannot be resolved" in (await refusal("http://no-such-host.invalid/x.png")).info.message


def test_the_allowlist_variable_is_checked_at_start() -> None:
    assert load_settings("dispatch", {}).input_url_allow == ()
    settings = load_settings("dispatch", {"HUB_INPUT_URL_ALLOW": " images.internal., 10.0.0.0/8 ,::1"})
    assert settings.input_url_allow == ("images.internal", "10.0.0.0/8", "::1")
    allow = UrlAllowlist.parse(settings.input_url_allow)
    assert allow.hosts == {"images.internal"}
    assert allow.allows(ipaddress.ip_address("10.9.8.7")) and not allow.allows(ipaddress.ip_address("11.0.0.1"))
    with pytest.raises(ConfigError, match="HUB_INPUT_URL_ALLOW: 'http://x/' is neither"):
        load_settings("dispatch", {"HUB_INPUT_URL_ALLOW": "http://x/"})
