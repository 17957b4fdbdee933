"""Who may pass the gateway's doors, against real hub processes: a job belongs to the API key that made it (every
door that takes a job id answers another key exactly as an unknown id), a `jobs:read-all` key reads every job,
and the Host/Origin allowlists that stop DNS rebinding (HUB_GATEWAY_ALLOWED_HOSTS / _ORIGINS)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from gateway_support import MCP_ACCEPT, GatewayHub, gateway_fixture, mcp_initialize
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import GetJob
from contracts.messages.keys import READ_ALL_JOBS, CreateApiKey, CreatedApiKey
from contracts.runtime.bus import call

pytestmark = pytest.mark.slow

PUBLIC_NAME = "hub.example.org"


gw = gateway_fixture(
    "gateway-doors", HUB_GATEWAY_ALLOWED_HOSTS=PUBLIC_NAME, HUB_GATEWAY_ALLOWED_ORIGINS="https://console.example.net"
)


async def new_key(gw: GatewayHub, name: str, scopes: list[str] | None = None) -> CreatedApiKey:
    return await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name=name, scopes=scopes or []))


def bearer(key: CreatedApiKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


@contextlib.asynccontextmanager
async def mcp_client(gw: GatewayHub, key: CreatedApiKey) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=bearer(key), timeout=httpx2.Timeout(30, read=60)) as http,
        streamable_http_client(f"{gw.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def tool_answer(session: ClientSession, tool: str, job_id: str) -> tuple[bool, str, Any]:
    result = await session.call_tool(tool, {"job_id": job_id})
    return result.is_error, result.content[0].text, result.structured_content  # type: ignore[union-attr]


async def door_answers(gw: GatewayHub, key: CreatedApiKey, job_id: str) -> dict[str, Any]:
    """What every door that takes a job id answers `key` for `job_id`, with the id itself replaced by `<id>`."""
    answers: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=bearer(key), timeout=30) as http:
        for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
            response = await http.request(method, f"/api/v1/generations/{job_id}{path}")
            answers[f"{method} {path}"] = (response.status_code, response.text.replace(job_id, "<id>"))
    async with mcp_client(gw, key) as session:
        for tool in ("get_generation", "cancel_generation"):
            is_error, text, _ = await tool_answer(session, tool, job_id)
            answers[tool] = (is_error, text.replace(job_id, "<id>"))
    return answers


async def running_job(gw: GatewayHub, owner: CreatedApiKey) -> str:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=bearer(owner), timeout=30) as http:
        submitted = await http.post("/api/v1/generations", json={"prompt": "a lighthouse in fog", "steps": 20})
    assert submitted.status_code == 202, submitted.text
    return submitted.json()["job_id"]


async def test_another_key_gets_on_every_door_what_an_unknown_id_gets(gw: GatewayHub) -> None:
    owner, stranger = await new_key(gw, "owner"), await new_key(gw, "stranger")
    gw.comfy.work_seconds = 3.0  # the job is still running while the stranger tries to cancel it
    try:
        job_id = await running_job(gw, owner)
        unknown = await door_answers(gw, stranger, uuid.uuid4().hex)
        foreign = await door_answers(gw, stranger, job_id)
        assert foreign == unknown
        assert {key: answer[0] for key, answer in foreign.items() if key.startswith(("GET", "DELETE"))} == {
            "GET ": 404,
            "DELETE ": 404,
            "GET /events": 404,
        }
        assert foreign["get_generation"][0] is True and "no job with id '<id>'" in foreign["get_generation"][1]
        assert "a lighthouse" not in str(foreign)  # the prompt is not told
        # The stranger's DELETE and cancel_generation did nothing: the job runs on and the owner sees it end.
        async with httpx.AsyncClient(base_url=gw.base_url, headers=bearer(owner), timeout=30) as http:
            deadline = time.monotonic() + 30
            while not (view := (await http.get(f"/api/v1/generations/{job_id}")).json())["done"]:
                assert time.monotonic() < deadline, view
        assert view["status"] == "completed", (view.get("error"), view.get("timings"))
    finally:
        gw.comfy.work_seconds = 0.2


async def test_the_owner_reads_and_cancels_its_job_through_every_door(gw: GatewayHub) -> None:
    owner = await new_key(gw, "owner-2")
    gw.comfy.work_seconds = 20.0
    try:
        job_id = await running_job(gw, owner)
        async with mcp_client(gw, owner) as session:
            is_error, _, read = await tool_answer(session, "get_generation", job_id)
            assert not is_error and read["job_id"] == job_id
            is_error, _, cancelled = await tool_answer(session, "cancel_generation", job_id)
            assert not is_error and cancelled["status"] in ("cancelling", "cancelled"), cancelled
    finally:
        gw.comfy.work_seconds = 0.2


async def test_a_read_all_key_reads_every_job_but_cancels_only_its_own(gw: GatewayHub) -> None:
    owner, monitor = await new_key(gw, "owner-3"), await new_key(gw, "monitor", [READ_ALL_JOBS])
    assert monitor.key.scopes == [READ_ALL_JOBS]
    job_id = await running_job(gw, owner)
    async with httpx.AsyncClient(base_url=gw.base_url, headers=bearer(monitor), timeout=30) as http:
        read = await http.get(f"/api/v1/generations/{job_id}")
        assert read.status_code == 200 and read.json()["job_id"] == job_id
        async with http.stream("GET", f"/api/v1/generations/{job_id}/events") as stream:
            assert stream.status_code == 200
            kinds = [line.split(":", 1)[1].strip() async for line in stream.aiter_lines() if line.startswith("event:")]
        assert kinds[0] == "accepted" and kinds[-1] == "completed"
        refused = await http.delete(f"/api/v1/generations/{job_id}")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["field"] == "job_id" and READ_ALL_JOBS in refused.json()["error"]["message"]
    async with mcp_client(gw, monitor) as session:
        is_error, _, seen = await tool_answer(session, "get_generation", job_id)
        assert not is_error and seen["status"] == "completed"
    view = await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
    assert view.api_key_id == owner.key.key_id


async def test_an_unknown_scope_is_refused_naming_the_field(gw: GatewayHub) -> None:
    with pytest.raises(HubError) as raised:
        await new_key(gw, "typo", ["jobs:read-everything"])
    assert raised.value.code == ErrorCode.INVALID_REQUEST and raised.value.info.field == "scopes"
    assert READ_ALL_JOBS in raised.value.info.message


# -- Host and Origin (DNS rebinding) -------------------------------------------------------------------

INIT = mcp_initialize("2025-11-25")


async def test_a_rebound_name_is_refused_on_mcp_and_rest_even_with_a_valid_key(gw: GatewayHub) -> None:
    port = gw.base_url.rsplit(":", 1)[1]
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as http:
        mcp = await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, **rebound})
        assert mcp.status_code == 403
        error = mcp.json()["error"]  # a JSON-RPC error: MCP clients show its message
        assert "HUB_GATEWAY_ALLOWED_HOSTS=evil.example" in error["message"] and error["data"]["field"] == "Host"
        rest = await http.get("/api/v1/render-types", headers=rebound)
        assert rest.status_code == 403 and rest.json()["error"]["field"] == "Host"
        assert "HUB_GATEWAY_ALLOWED_HOSTS" in rest.json()["error"]["message"]
        image = await http.get(f"/images/{uuid.uuid4().hex}", headers=rebound)
        assert image.status_code == 403
        # Health probes answer whatever name they come under (orchestrators probe by address).
        assert (await http.get("/healthz", headers=rebound)).status_code == 200


async def test_a_foreign_origin_is_refused_under_an_allowed_host(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as http:
        for origin in ("https://evil.example", "null"):
            refused = await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, "Origin": origin})
            assert refused.status_code == 403, origin
            assert "HUB_GATEWAY_ALLOWED_ORIGINS" in refused.json()["error"]["message"]
            assert (await http.get("/api/v1/styles", headers={"Origin": origin})).status_code == 403
        listed = await http.get("/api/v1/styles", headers={"Origin": "https://console.example.net"})
        assert listed.status_code == 200, listed.text


async def test_loopback_names_and_the_listed_public_name_pass(gw: GatewayHub) -> None:
    port = gw.base_url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as http:
        for host, origin in (
            (f"localhost:{port}", f"http://localhost:{port}"),
            (f"[::1]:{port}", "http://[::1]:6274"),
            (f"127.0.0.1:{port}", "http://localhost:5173"),
            (PUBLIC_NAME, f"https://{PUBLIC_NAME}"),
        ):
            answer = await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, "Host": host, "Origin": origin})
            assert answer.status_code == 200, (host, answer.text)
            rest = await http.get("/api/v1/render-types", headers={"Host": host})
            assert rest.status_code == 200, (host, rest.text)


async def test_the_sdk_client_shows_the_refusal_and_the_variable(gw: GatewayHub) -> None:
    from mcp.shared.exceptions import MCPError

    port = gw.base_url.rsplit(":", 1)[1]
    headers = {**gw.auth, "Host": f"evil.example:{port}"}
    with anyio.fail_after(30):
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http,
            streamable_http_client(f"{gw.base_url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            with pytest.raises(MCPError, match=r"HUB_GATEWAY_ALLOWED_HOSTS=evil\.example"):
                await session.initialize()
