"""Host and Origin allowlists (contracts.runtime.host_guard): the rules, the variables that set them, and the admin
UI behind them (a real UI process over real HTTP; the gateway's doors are in test_gateway_doors.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from contracts.runtime.config import ConfigError, load_settings
from contracts.runtime.host_guard import HostPolicy, policy_of
from hub_deploy.natsserver import free_port


def gateway_policy(**env: str) -> HostPolicy:
    return policy_of(load_settings("gateway", env), "gateway")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8600", True),
        ("127.0.0.1", True),
        ("127.5.6.7:80", True),  # all of 127.0.0.0/8 is loopback
        ("localhost:8600", True),
        ("LOCALHOST.:8600", True),  # case and the root label's dot change nothing
        ("[::1]:8600", True),
        ("[::1]", True),
        ("evil.example:8600", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io:8600", False),
        ("[::2]:8600", False),
        ("10.0.0.5:8600", False),  # an address the hub does not listen on, and not listed
        ("localhost:port", False),
        ("", False),
        (None, False),
    ],
)
def test_by_default_only_loopback_hosts_pass(host: str | None, allowed: bool) -> None:
    assert (gateway_policy().host_problem(host) is None) is allowed


def test_listed_names_subdomains_addresses_and_the_listen_address_pass() -> None:
    policy = gateway_policy(
        HUB_GATEWAY_ALLOWED_HOSTS="Hub.Example.com, *.hub.internal, [fd00::7], 10.1.2.3", HUB_GATEWAY_HOST="192.0.2.9"
    )
    for host in ("hub.example.com:443", "gw-1.hub.internal:8600", "[fd00::7]:8600", "10.1.2.3", "192.0.2.9:8600"):
        assert policy.host_problem(host) is None, host
    for host in ("hub.internal", "example.com", "evil-hub.example.com", "10.1.2.4"):
        assert policy.host_problem(host) is not None, host
    # A wildcard bind is no name: containers listen on 0.0.0.0 and list their service names.
    assert gateway_policy(HUB_GATEWAY_HOST="0.0.0.0").host_problem("0.0.0.0:8600") is not None
    assert gateway_policy(HUB_GATEWAY_ALLOWED_HOSTS="*").host_problem("anything.example") is None


def test_a_refused_host_is_told_which_variable_to_set() -> None:
    problem = gateway_policy().host_problem("evil.example:8600")
    assert problem is not None and "HUB_GATEWAY_ALLOWED_HOSTS=evil.example" in problem
    ui = policy_of(load_settings("ui", {}), "ui").host_problem("evil.example:8601")
    assert ui is not None and "HUB_UI_ALLOWED_HOSTS" in ui


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://localhost:6274", True),  # e.g. the MCP Inspector on this machine
        ("http://127.0.0.1:9999", True),
        ("http://[::1]:8080", True),
        ("https://hub.example.com", True),  # a page on the hub's own (listed) name
        ("https://app.example.net", True),  # listed in HUB_GATEWAY_ALLOWED_ORIGINS
        ("https://app.example.net:443", True),
        ("http://app.example.net", False),  # another scheme is another origin
        ("https://evil.example", False),
        ("http://evil.example:8600", False),
        ("https://localhost.evil.example", False),
        ("null", False),
        ("file://", False),
    ],
)
def test_origins_pass_from_the_servers_own_names_or_the_list(origin: str | None, allowed: bool) -> None:
    policy = gateway_policy(
        HUB_GATEWAY_ALLOWED_HOSTS="hub.example.com", HUB_GATEWAY_ALLOWED_ORIGINS="https://APP.example.net/"
    )
    problem = policy.origin_problem(origin)
    assert (problem is None) is allowed
    if problem is not None:
        assert "HUB_GATEWAY_ALLOWED_ORIGINS" in problem


def test_any_host_does_not_open_origins() -> None:
    policy = gateway_policy(HUB_GATEWAY_ALLOWED_HOSTS="*")
    assert policy.origin_problem("https://evil.example") is not None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HUB_GATEWAY_ALLOWED_HOSTS", "https://hub.example.com"),
        ("HUB_GATEWAY_ALLOWED_HOSTS", "hub.example.com:8600"),
        ("HUB_UI_ALLOWED_HOSTS", "hub example"),
        ("HUB_GATEWAY_ALLOWED_ORIGINS", "hub.example.com"),
        ("HUB_UI_ALLOWED_ORIGINS", "https://app.example.com/path"),
        ("HUB_UI_ALLOWED_ORIGINS", "ftp://files.example.com"),
    ],
)
def test_a_bad_entry_stops_the_service_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings("gateway", {variable: value})


async def test_the_admin_ui_refuses_foreign_hosts_and_origins(nc, start_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    ui = start_service(
        "ui",
        data_dir=tmp_path,
        HUB_UI_PORT=str(port),
        HUB_ADMIN_PASSWORD="s3cret-Pass",
        HUB_UI_ALLOWED_HOSTS="admin.example.org",
    )
    await ui.wait_healthy(nc)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        rebound = await client.get(
            "/login", headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        )
        assert rebound.status_code == 403 and "HUB_UI_ALLOWED_HOSTS=evil.example" in rebound.text
        login_page = await client.get("/login")
        assert login_page.status_code == 200
        token = login_page.text.split('name="_csrf_token" value="')[1].split('"')[0]
        form = {"username": "admin", "password": "s3cret-Pass", "_csrf_token": token}
        foreign = await client.post("/login", data=form, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and "HUB_UI_ALLOWED_ORIGINS" in foreign.text
        for host in (f"localhost:{port}", f"[::1]:{port}", "admin.example.org"):
            assert (await client.get("/login", headers={"Host": host})).status_code == 200, host
        own = await client.post("/login", data=form, headers={"Origin": f"http://localhost:{port}"})
        assert own.status_code in (302, 303) and own.headers["location"] == "/"
        probe = await client.get("/healthz", headers={"Host": "10.244.0.17:8601"})  # an orchestrator's probe
        assert probe.status_code == 200
    await ui.stop()
