"""The gateway: API keys over NATS, authentication and Origin checks, MCP over Streamable HTTP (official SDK
client), images with Range, all against real registry, prompt, dispatch and gateway processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import random
import signal
import time
import uuid
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from dispatch_support import retention_removes_images_of
from gateway_support import MCP_ACCEPT, GatewayHub, gateway_fixture, mcp_initialize
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from contracts import endpoints
from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import GetJob
from contracts.messages.keys import CreateApiKey, ListApiKeys, RevokeApiKey
from contracts.runtime.bus import call
from contracts.runtime.storage import PreviewStore
from dispatch_service.renditions import RENDITION

pytestmark = pytest.mark.slow


gw = gateway_fixture("gateway", HUB_GATEWAY_TOOL_BUDGET_S="4")


def mcp_session(gw: GatewayHub, secret: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {secret or gw.key.secret}"}
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120))


class Mcp:
    """An initialized official-SDK client session to the gateway's /mcp."""

    def __init__(self, gw: GatewayHub) -> None:
        self._gw = gw
        self._stack = None

    async def __aenter__(self) -> ClientSession:
        self._stack = contextlib.AsyncExitStack()
        http = await self._stack.enter_async_context(mcp_session(self._gw))
        read, write = await self._stack.enter_async_context(
            streamable_http_client(f"{self._gw.base_url}/mcp", http_client=http)
        )
        session = await self._stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        await self._stack.aclose()


# -- API keys ---------------------------------------------------------------------------------------


async def test_api_keys_are_created_listed_and_revoked_over_nats(gw: GatewayHub) -> None:
    created = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="  laptop "))
    assert created.secret.startswith("ghub_") and len(created.secret) == len("ghub_") + 32
    assert created.key.name == "laptop" and created.secret.startswith(created.key.prefix)
    assert created.key.prefix != created.secret

    listing = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
    assert created.key.key_id in {k.key_id for k in listing.keys}
    assert created.secret not in repr(listing)  # the secret is shown once, never listed

    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        ok = await http.get("/api/v1/render-types", headers={"Authorization": f"Bearer {created.secret}"})
        assert ok.status_code != 401
        listing = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
        used = next(k for k in listing.keys if k.key_id == created.key.key_id)
        assert used.last_used_at is not None and used.last_used_at >= created.key.created_at

        revoked = await call(gw.nc, endpoints.Gateway.KEYS_REVOKE, RevokeApiKey(key_id=created.key.key_id))
        assert revoked.revoked_at is not None
        listing = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys())
        assert created.key.key_id not in {k.key_id for k in listing.keys}
        everything = await call(gw.nc, endpoints.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True))
        assert created.key.key_id in {k.key_id for k in everything.keys}

        refused = await http.post("/mcp", headers={"Authorization": f"Bearer {created.secret}"}, json={})
        assert refused.status_code == 401
        assert (
            'error_description="invalid API key: the key is not valid or was revoked'
            in refused.headers["www-authenticate"]
        )

    with pytest.raises(HubError) as raised:
        await call(gw.nc, endpoints.Gateway.KEYS_REVOKE, RevokeApiKey(key_id="key_nope"))
    assert raised.value.code == ErrorCode.NOT_FOUND and raised.value.info.field == "key_id"
    with pytest.raises(HubError) as raised:
        await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="   "))
    assert raised.value.info.field == "name"


async def test_a_revoked_key_is_refused_at_once_by_every_gateway_replica(gw: GatewayHub) -> None:
    """Each replica caches the keys it checked for a moment; revoking a key (answered by one replica) drops it on
    every replica, so the next request is refused wherever it lands."""
    first = gw.hub.processes["gateway"]
    second = gw.hub.start("gateway")  # a second replica on the same database
    gw.hub.processes["gateway"] = first
    try:
        await second.wait_healthy(gw.nc)
        urls = [gw.base_url, f"http://127.0.0.1:{second.env['HUB_GATEWAY_PORT']}"]
        created = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="two replicas"))
        auth = {"Authorization": f"Bearer {created.secret}"}
        async with httpx.AsyncClient(timeout=30) as http:
            for url in urls:  # checked (and cached) on both
                deadline = time.monotonic() + 15
                while (answer := await http.get(f"{url}/api/v1/render-types", headers=auth)).status_code != 200:
                    assert time.monotonic() < deadline, answer.text
                    await asyncio.sleep(0.1)
            await call(gw.nc, endpoints.Gateway.KEYS_REVOKE, RevokeApiKey(key_id=created.key.key_id))
            await asyncio.sleep(0.1)  # the announcement travels
            for url in urls:
                assert (await http.get(f"{url}/api/v1/render-types", headers=auth)).status_code == 401, url
    finally:
        second.kill()
        await second.wait_exit()


# -- HTTP checks in front of /mcp -------------------------------------------------------------------

INIT = mcp_initialize("2025-06-18")


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "invalid API key: none was sent"),
        ({"Authorization": "Bearer ghub_not-a-real-key-000000000000000000"}, "invalid API key: the key is not valid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid API key: the key is not valid"),
    ],
)
async def test_mcp_refuses_missing_or_bad_keys(gw: GatewayHub, headers: dict[str, str], problem: str) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        response = await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, **headers})
    assert response.status_code == 401
    # RFC 6750: the key is wrong (invalid_token), said in words; no resource_metadata pointing at an OAuth server.
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="genimage-hub", error="invalid_token", error_description="{problem}')
    assert "resource_metadata" not in challenge
    # A JSON-RPC error, which MCP clients show as the error.
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32001
    assert body["error"]["message"].startswith(problem) and body["error"]["data"] == {"code": "unauthorized"}


async def test_a_wrong_key_reads_as_an_invalid_api_key_in_the_sdk_client(gw: GatewayHub) -> None:
    from mcp.shared.exceptions import MCPError

    with anyio.fail_after(30):
        async with (
            mcp_session(gw, "ghub_wrong-key-00000000000000000000000000") as http,
            streamable_http_client(f"{gw.base_url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            with pytest.raises(MCPError, match="invalid API key: the key is not valid or was revoked"):
                await session.initialize()
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
            assert (await http.get(path)).status_code == 404  # no OAuth metadata: the hub has no OAuth


async def test_mcp_refuses_foreign_origins_and_accepts_loopback(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        foreign = await http.post(
            "/mcp", json=INIT, headers={**MCP_ACCEPT, **gw.auth, "Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        local = await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, **gw.auth, "Origin": "http://localhost:5173"})
        assert local.status_code == 200, local.text


async def raw_session(http: httpx.AsyncClient, gw: GatewayHub) -> dict[str, str]:
    """Initialize over raw HTTP; the headers the following requests need."""
    response = await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, **gw.auth})
    assert response.status_code == 200, response.text
    headers = {**MCP_ACCEPT, **gw.auth, "MCP-Protocol-Version": "2025-06-18"}
    if "mcp-session-id" in response.headers:
        headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post("/mcp", json=done, headers=headers)).status_code == 202
    return headers


def sse_or_json(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = next(
            line[5:].strip() for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()
        )
        return json.loads(data)
    return response.json()


def rpc_error(response: httpx.Response) -> dict[str, object]:
    return sse_or_json(response)["error"]


async def test_malformed_json_rpc_gets_the_right_error_codes(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
        headers = await raw_session(http, gw)
        parse = await http.post("/mcp", content=b"{not json", headers=headers)
        assert rpc_error(parse)["code"] == -32700

        for not_a_request in (
            {"jsonrpc": "2.0", "id": 5, "params": {}},
            {"jsonrpc": "1.0", "id": 5, "method": "ping"},
            {"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"},
            [1, 2],
        ):
            invalid = await http.post("/mcp", json=not_a_request, headers=headers)
            assert invalid.status_code == 400 and rpc_error(invalid)["code"] == -32600, not_a_request

        unknown = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 6, "method": "nope/nothing"}, headers=headers)
        assert rpc_error(unknown)["code"] == -32601

        bad = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"arguments": {}}}
        assert rpc_error(await http.post("/mcp", json=bad, headers=headers))["code"] == -32602
        no_tool = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}
        assert rpc_error(await http.post("/mcp", json=no_tool, headers=headers))["code"] == -32602

        for version in ("2025-03-26", "2025-06-18", "2025-11-25", "1999-01-01", "2024-11-05", "2026-07-28"):
            init = mcp_initialize(version)
            answer = await http.post("/mcp", json=init, headers={**MCP_ACCEPT, **gw.auth})
            assert answer.status_code == 200
            agreed = sse_or_json(answer)["result"]["protocolVersion"]
            # A listed version is kept; any other is answered with the hub's own newest one (the spec's rule),
            # also 2024-11-05 (no Streamable HTTP) and 2026-07-28 (no initialize).
            assert agreed == (version if version.startswith("2025") else "2025-11-25"), version

        versioned = {**headers, "MCP-Protocol-Version": "1999-01-01"}
        listing = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
        wrong = await http.post("/mcp", json=listing, headers=versioned)
        assert wrong.status_code == 400
        # About versions, not about the 2026 `_meta` keys the SDK would ask for.
        assert "unsupported MCP-Protocol-Version '1999-01-01'" in rpc_error(wrong)["message"]  # type: ignore[operator]
        assert "_meta" not in rpc_error(wrong)["message"]  # type: ignore[operator]
        modern = await http.post("/mcp", json=listing, headers={**headers, "MCP-Protocol-Version": "2026-07-28"})
        assert modern.status_code == 400 and "has no sessions" in rpc_error(modern)["message"]  # type: ignore[operator]


async def test_a_rejected_request_names_no_session_that_was_never_created(gw: GatewayHub) -> None:
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
        for body, headers, status in (
            (INIT, {**gw.auth, "Accept": "text/html", "Content-Type": "application/json"}, 406),
            (listing, {**MCP_ACCEPT, **gw.auth}, 400),  # not initialize, and no session
            (b"{not json", {**MCP_ACCEPT, **gw.auth}, 400),
        ):
            sent = {"content": body} if isinstance(body, bytes) else {"json": body}
            answer = await http.post("/mcp", headers=headers, **sent)  # type: ignore[arg-type]
            assert answer.status_code == status, answer.text
            assert "mcp-session-id" not in answer.headers, (body, answer.headers)
        # An accepted initialize still gets its session.
        assert "mcp-session-id" in (await http.post("/mcp", json=INIT, headers={**MCP_ACCEPT, **gw.auth})).headers


async def test_a_batch_on_a_2025_03_26_session_is_answered_as_that_revision_says(gw: GatewayHub) -> None:
    old = mcp_initialize("2025-03-26")
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
        started = await http.post("/mcp", json=old, headers={**MCP_ACCEPT, **gw.auth})
        assert sse_or_json(started)["result"]["protocolVersion"] == "2025-03-26"
        session = {**MCP_ACCEPT, **gw.auth, "Mcp-Session-Id": started.headers["mcp-session-id"]}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post("/mcp", json=[initialized], headers=session)).status_code == 202
        batch = [
            {"jsonrpc": "2.0", "id": "a", "method": "tools/list"},
            {"jsonrpc": "2.0", "id": "b", "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
            {"jsonrpc": "2.0", "id": "c", "method": "nope/nothing"},
            {"jsonrpc": "1.0", "id": "d", "method": "ping"},
        ]
        answer = await http.post("/mcp", json=batch, headers=session)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
        by_id = {reply["id"]: reply for reply in answer.json()}
        assert set(by_id) == {"a", "b", "c", None}
        assert "generate_image" in {tool["name"] for tool in by_id["a"]["result"]["tools"]}
        assert by_id["b"]["result"] == {}
        assert by_id["c"]["error"]["code"] == -32601 and by_id[None]["error"]["code"] == -32600
        # initialize may not be batched; later revisions have no batches at all.
        assert (await http.post("/mcp", json=[old], headers=session)).status_code == 400
        newer = await raw_session(http, gw)  # 2025-06-18
        refused = await http.post("/mcp", json=[batch[1]], headers=newer)
        assert refused.status_code == 400 and "only in protocol version 2025-03-26" in rpc_error(refused)["message"]  # type: ignore[operator]


# -- MCP tools ---------------------------------------------------------------------------------------


async def test_tools_are_listed_with_schemas_from_the_contracts(gw: GatewayHub) -> None:
    async with Mcp(gw) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {
        "generate_image",
        "get_generation",
        "cancel_generation",
        "list_render_types",
        "list_styles",
        "preview_prompt",
    }
    generate = tools["generate_image"]
    # Not every render type takes a prompt (upscale does not): the description says where it is needed.
    assert "prompt" not in generate.input_schema.get("required", [])
    assert "omit it" in generate.input_schema["properties"]["prompt"]["description"]
    assert "without a prompt slot" in (generate.description or "")
    assert "api_key_id" not in generate.input_schema["properties"]
    assert "input_image" in generate.input_schema["properties"] and "$defs" in generate.input_schema
    assert generate.output_schema and "job_id" in generate.output_schema["properties"]
    assert all(t.description and len(t.description) > 30 for t in tools.values())


async def test_each_era_keeps_its_own_tool_listing(gw: GatewayHub) -> None:
    """The gateway answers tools/list from the SDK's first answer for the same protocol version: a 2026-07-28
    listing (resultType, cache hints, no `execution`) never goes to a handshake session, nor the other way."""
    headers = {**MCP_ACCEPT, **gw.auth, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http, Mcp(gw) as session:
        for request_id in (1, 2):
            answer = await http.post("/mcp", json=modern(request_id, "tools/list"), headers=headers)
            modern_listing = sse_or_json(answer)
            assert modern_listing["result"]["resultType"] == "complete" and "ttlMs" in modern_listing["result"]
            assert all("execution" not in tool for tool in modern_listing["result"]["tools"])
            handshake = {t.name: t for t in (await session.list_tools()).tools}
            assert handshake["generate_image"].execution is not None
            assert set(handshake) == {tool["name"] for tool in modern_listing["result"]["tools"]}


async def test_catalog_tools_and_resources(gw: GatewayHub) -> None:
    async with Mcp(gw) as session:
        render_types = await session.call_tool("list_render_types", {})
        assert not render_types.is_error
        names = [r["name"] for r in render_types.structured_content["render_types"]]
        assert "sdxl" in names

        styles = await session.call_tool("list_styles", {})
        assert not styles.is_error and styles.structured_content["styles"]
        style = styles.structured_content["styles"][0]["name"]

        preview = await session.call_tool("preview_prompt", {"prompt": "a red fox", "styles": [style]})
        assert not preview.is_error, preview.content
        assert "a red fox" in preview.structured_content["positive"]
        assert preview.structured_content["styles_applied"] == [style]

        wrong = await session.call_tool("preview_prompt", {"prompt": "a red fox", "styles": ["no-such-style"]})
        assert wrong.is_error and "no-such-style" in wrong.content[0].text

        bad = await session.call_tool("generate_image", {"prompt": "x", "width": "wide"})
        assert bad.is_error and "width" in bad.content[0].text

        resources = {str(r.uri) for r in (await session.list_resources()).resources}
        assert resources == {"hub://render-types", "hub://styles"}
        read = await session.read_resource("hub://render-types")
        assert "sdxl" in read.contents[0].text


async def test_generate_image_reports_progress_and_returns_links_and_a_thumbnail(gw: GatewayHub) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    renditions_before = len(gw.comfy.preview_requests)
    async with Mcp(gw) as session:
        result = await session.call_tool(
            "generate_image",
            {"prompt": "a lighthouse at dusk", "steps": 8, "seed": 42, "count": 1},
            progress_callback=on_progress,
        )
        assert not result.is_error, result.content
        data = result.structured_content
        assert data["status"] == "completed" and data["done"] is True
        assert data["seed"] == 42 and data["render_type"] == "sdxl" and data["instance"] == "gw-comfy"
        assert "a lighthouse at dusk" in data["positive_prompt"]
        assert data["timings"]["finished_at"] >= data["timings"]["accepted_at"]

        links = [c for c in result.content if isinstance(c, types.ResourceLink)]
        assert len(links) == 1 and str(links[0].uri) == f"{gw.base_url}/images/{data['images'][0]['output_id']}"
        thumbs = [c for c in result.content if isinstance(c, types.ImageContent)]
        assert len(thumbs) == 1 and thumbs[0].mime_type == "image/jpeg"  # the double's PNG is opaque
        thumb = base64.b64decode(thumbs[0].data)
        assert len(thumb) <= 48 * 1024
        assert Image.open(io.BytesIO(thumb)).format == "JPEG"
        # The MCP door's jobs ask ComfyUI for a JPEG rendition of each output, kept for the preview to start from.
        assert gw.comfy.preview_requests[renditions_before:] == [RENDITION]
        assert await PreviewStore(gw.nc.jetstream()).load(data["images"][0]["output_id"]) is not None

        assert progress, "no notifications/progress arrived"
        values = [v for v, _ in progress]
        assert values == sorted(values) and values[-1] == 100.0

        view = await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=data["job_id"]))
        assert view.api_key_id == gw.key.key.key_id

        again = await session.call_tool("get_generation", {"job_id": data["job_id"]})
        assert again.structured_content["images"] == data["images"]
        assert [c for c in again.content if isinstance(c, types.ImageContent)] == thumbs
        # The answer was built from the job's events (no view asked after it completed): the same as the
        # dispatcher's view, but for the steps of the last node, which the dispatcher records at most every 0.5 s.
        assert {**again.structured_content, "progress": None} == {**data, "progress": None}
        assert again.structured_content["progress"]["percent"] == data["progress"]["percent"] == 100

        blob = await session.read_resource(str(links[0].uri))
        contents = blob.contents[0]
        assert contents.mime_type == data["images"][0]["content_type"]
        image_bytes = base64.b64decode(contents.blob)

        missing = await session.call_tool("get_generation", {"job_id": "no-such-job"})
        assert missing.is_error

    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        url = f"/images/{data['images'][0]['output_id']}"
        full = await http.get(url)
        assert full.status_code == 200 and full.content == image_bytes
        assert full.headers["content-type"].startswith(data["images"][0]["content_type"])
        assert full.headers["cache-control"] == "private, max-age=31536000, immutable"
        etag = full.headers["etag"]
        assert (await http.get(url, headers={"If-None-Match": etag})).status_code == 304

        part = await http.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == image_bytes[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(image_bytes)}"
        tail = await http.get(url, headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == image_bytes[-5:]
        beyond = await http.get(url, headers={"Range": f"bytes={len(image_bytes)}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(image_bytes)}"
        assert (await http.get("/images/nope")).status_code == 404


async def test_a_call_that_asks_no_progress_asks_the_dispatcher_for_no_view(gw: GatewayHub) -> None:
    """The dispatcher's view of a held call's job gives the first progress notification (its place in the queue);
    a completed job's answer comes from its events. A call without a progress token asks for no view: a request
    to the dispatcher and two NATS messages fewer per generation."""
    asked: list[str] = []

    async def note(message: Any) -> None:
        asked.append(json.loads(message.data).get("job_id"))

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        pass

    views = await gw.nc.subscribe(endpoints.Dispatch.JOBS_GET.subject, cb=note)
    try:
        async with Mcp(gw) as session:
            plain = await session.call_tool("generate_image", {"prompt": "a quiet harbour", "steps": 1})
            followed = await session.call_tool(
                "generate_image", {"prompt": "a busy harbour", "steps": 1}, progress_callback=on_progress
            )
        await gw.nc.flush()
    finally:
        await views.unsubscribe()
    assert plain.structured_content["status"] == followed.structured_content["status"] == "completed"
    assert plain.structured_content["positive_prompt"] and plain.structured_content["images"]
    assert plain.structured_content["job_id"] not in asked
    assert followed.structured_content["job_id"] in asked  # its place, for the first notification


async def test_cancelling_the_request_cancels_the_job(gw: GatewayHub) -> None:
    gw.comfy.work_seconds = 20.0
    try:
        async with Mcp(gw) as session:
            started = time.monotonic()
            job_ids: list[str] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                pass

            with anyio.move_on_after(2.0):
                await session.call_tool(
                    "generate_image", {"prompt": "a very slow painting", "steps": 50}, progress_callback=on_progress
                )
            assert time.monotonic() - started < 10
        from contracts.messages.jobs import QueueViewRequest

        deadline = time.monotonic() + 15
        while True:
            queue = await call(gw.nc, endpoints.Dispatch.QUEUE_VIEW, QueueViewRequest(include_finished=True))
            slow = [j for j in queue.jobs if j.prompt == "a very slow painting"]
            job_ids = [j.job_id for j in slow]
            if slow and all(j.status == "cancelled" for j in slow):
                break
            assert time.monotonic() < deadline, slow
            await asyncio.sleep(0.2)
        assert len(job_ids) == 1
    finally:
        gw.comfy.work_seconds = 0.2


async def test_cancel_generation_tool_and_budget(gw: GatewayHub) -> None:
    gw.comfy.work_seconds = 20.0
    try:
        async with Mcp(gw) as session:
            # The module's gateway holds a call at most HUB_GATEWAY_TOOL_BUDGET_S (see the fixture).
            started = time.monotonic()
            pending = await session.call_tool("generate_image", {"prompt": "a slow sunset", "steps": 50})
            assert time.monotonic() - started < 8
            assert not pending.is_error
            assert pending.structured_content["done"] is False
            job_id = pending.structured_content["job_id"]
            cancelled = await session.call_tool("cancel_generation", {"job_id": job_id})
            assert cancelled.structured_content["status"] in ("cancelling", "cancelled")  # the former: running
            deadline = time.monotonic() + 10
            while (view := await session.call_tool("get_generation", {"job_id": job_id})).structured_content[
                "status"
            ] == "cancelling":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert view.structured_content["status"] == "cancelled"
            assert view.structured_content["error"] == "cancelled by the caller"
    finally:
        gw.comfy.work_seconds = 0.2


async def test_a_held_call_answers_with_its_job_when_the_dispatcher_stops_answering(gw: GatewayHub) -> None:
    """The view asked after the budget does not come (the dispatcher is stopped, as a busy one answering 1,000
    views one by one would be late): the call answers with the job as its events told, not with an error."""
    gw.comfy.work_seconds = 20.0
    dispatch = gw.hub.processes["dispatch"].process
    assert dispatch is not None
    try:
        async with Mcp(gw) as session:
            progress: list[str | None] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(message)

            call_tool = session.call_tool(
                "generate_image", {"prompt": "a lighthouse held", "steps": 50}, progress_callback=on_progress
            )
            pending = asyncio.ensure_future(call_tool)
            deadline = time.monotonic() + 10
            while not any(m and "%" in m for m in progress):  # running: its progress arrives
                assert time.monotonic() < deadline and not pending.done()
                await asyncio.sleep(0.05)
            os.kill(dispatch.pid, signal.SIGSTOP)
            try:
                result = await asyncio.wait_for(pending, 30)
            finally:
                os.kill(dispatch.pid, signal.SIGCONT)
            assert not result.is_error, result.content
            data = result.structured_content
            assert data["status"] == "running" and data["done"] is False and data["instance"] == "gw-comfy"
            assert "a lighthouse held" in data["positive_prompt"] and data["render_type"] == "sdxl"
            cancelled = await session.call_tool("cancel_generation", {"job_id": data["job_id"]})
            assert not cancelled.is_error, cancelled.content
    finally:
        gw.comfy.work_seconds = 0.2


async def test_stdio_bridge_relays_a_desktop_client_to_the_hub(gw: GatewayHub) -> None:
    import os
    import sys

    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway.stdio", "--url", f"{gw.base_url}/mcp"],
        env={**os.environ, "HUB_API_KEY": gw.key.secret},
    )
    with anyio.fail_after(60):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            assert "generate_image" in tools
            listing = await session.call_tool("list_render_types", {})
            assert not listing.is_error and "sdxl" in [r["name"] for r in listing.structured_content["render_types"]]


async def test_the_2026_era_works_without_a_handshake(gw: GatewayHub) -> None:
    """A 2026-07-28 request is self-contained (version, client info and capabilities in `_meta`)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    tool_call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "list_render_types", "arguments": {}, "_meta": meta},
    }
    headers = {
        **MCP_ACCEPT,
        **gw.auth,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "list_render_types",
    }
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
        answer = await http.post("/mcp", json=tool_call, headers=headers)
        assert answer.status_code == 200, answer.text
        result = sse_or_json(answer)["result"]
        assert "sdxl" in [r["name"] for r in result["structuredContent"]["render_types"]]
        refused = await http.post("/mcp", json=tool_call, headers={**headers, "Authorization": "Bearer ghub_wrong"})
        assert refused.status_code == 401


async def test_a_large_input_image_goes_through_the_store_not_a_nats_message(gw: GatewayHub) -> None:
    """A 2 MB image is twice NATS's default max_payload: the gateway stages it in the object store."""
    noisy = Image.frombytes("RGB", (1024, 700), bytes(random.Random(7).randbytes(1024 * 700 * 3)))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG", compress_level=0)
    picture = buffer.getvalue()
    assert len(picture) > 2 * gw.nc.max_payload
    async with Mcp(gw) as session:
        result = await session.call_tool(
            "generate_image",
            {
                "prompt": "repaint the noise",
                "render_type": "img2img",
                "input_image": {"base64": base64.b64encode(picture).decode(), "filename": "noise.png"},
            },
        )
        assert not result.is_error, result.content
        job_id = result.structured_content["job_id"]
        assert (gw.comfy.input_dir / "hub" / f"{job_id}.png").read_bytes() == picture

        # An earlier output as the input of the next job, by its id.
        earlier = result.structured_content["images"][0]["output_id"]
        again = await session.call_tool(
            "generate_image",
            {"prompt": "once more", "render_type": "img2img", "input_image": {"stored_id": earlier}},
        )
        assert not again.is_error and again.structured_content["status"] == "completed"

        bad = await session.call_tool(
            "generate_image", {"prompt": "x", "render_type": "img2img", "input_image": {"base64": "%%%"}}
        )
        assert bad.is_error and bad.structured_content["error"]["field"] == "input_image.base64"


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "desktop", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class StdioBridge:
    """`python -m gateway.stdio` as a desktop client runs it: JSON-RPC lines on its stdin and stdout."""

    def __init__(self, url: str, key: str) -> None:
        self._args = ("-m", "gateway.stdio", "--url", url, "--key", key)
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> StdioBridge:
        import sys

        self._process = await asyncio.create_subprocess_exec(
            sys.executable, *self._args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def send(self, message: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        await self._process.stdin.drain()

    async def ask(self, message: dict[str, Any], within_s: float = 15) -> dict[str, Any]:
        """Send a request; its answer (notifications before it are skipped), which must come within `within_s`."""
        assert self._process is not None and self._process.stdout is not None
        await self.send(message)
        async with asyncio.timeout(within_s):
            while True:
                line = await self._process.stdout.readline()
                assert line, "the bridge closed its stdout"
                answer = json.loads(line)
                if answer.get("id") == message["id"]:
                    return answer


def modern(request_id: int, method: str, **params: Any) -> dict[str, Any]:
    meta = MODERN_META
    if method.startswith("tasks/"):
        tasks = {"extensions": {"io.modelcontextprotocol/tasks": {}}}
        meta = {**MODERN_META, "io.modelcontextprotocol/clientCapabilities": tasks}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": meta}}


async def test_stdio_bridge_speaks_every_era_to_the_hub(gw: GatewayHub) -> None:
    async with StdioBridge(f"{gw.base_url}/mcp", gw.key.secret) as bridge:
        # 2026-07-28: no handshake; the bridge adds MCP-Protocol-Version, Mcp-Method and Mcp-Name from each message.
        discovered = await bridge.ask(modern(1, "server/discover"))
        assert "2026-07-28" in discovered["result"]["supportedVersions"], discovered
        called = await bridge.ask(modern(2, "tools/call", name="list_render_types", arguments={}))
        assert "sdxl" in [r["name"] for r in called["result"]["structuredContent"]["render_types"]], called
        unknown_task = await bridge.ask(modern(3, "tasks/get", taskId="no-such-task"))
        assert "not found" in unknown_task["error"]["message"], unknown_task
    for version in ("2025-03-26", "2025-06-18", "2025-11-25"):
        async with StdioBridge(f"{gw.base_url}/mcp", gw.key.secret) as bridge:
            init = mcp_initialize(version)
            assert (await bridge.ask(init))["result"]["protocolVersion"] == version
            await bridge.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            listed = await bridge.ask({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert "generate_image" in {tool["name"] for tool in listed["result"]["tools"]}, (version, listed)


async def test_stdio_bridge_says_at_once_that_a_key_is_wrong(gw: GatewayHub) -> None:
    async with StdioBridge(f"{gw.base_url}/mcp", "ghub_wrong-key-00000000000000000000000000") as bridge:
        for request in (INIT, modern(2, "tools/list")):
            answer = await bridge.ask(request)
            assert answer["error"]["message"].startswith("invalid API key: the key is not valid"), answer


async def test_stdio_bridge_says_at_once_that_the_hub_cannot_be_reached() -> None:
    from hub_deploy.natsserver import free_port

    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    async with StdioBridge(url, "ghub_any") as bridge:
        for request in (INIT, modern(2, "tools/list")):
            answer = await bridge.ask(request, within_s=10)
            assert answer["error"]["message"].startswith(f"cannot reach the hub at {url}"), answer


async def test_a_render_type_without_a_prompt_slot_runs_without_a_prompt(gw: GatewayHub) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (40, 24), (10, 200, 10)).save(picture, format="PNG")
    async with Mcp(gw) as session:
        listed = (await session.call_tool("list_render_types", {})).structured_content
        assert listed is not None
        specs = {rt["name"]: {s["name"]: s for s in rt["parameter_specs"]} for rt in listed["render_types"]}
        assert specs["sdxl"]["prompt"]["required"] is True and "prompt" not in specs["upscale"]

        image = {"base64": base64.b64encode(picture.getvalue()).decode()}
        result = await session.call_tool("generate_image", {"render_type": "upscale", "input_image": image})
        assert not result.is_error, result.content
        data = result.structured_content
        assert data is not None and data["status"] == "completed", data
        assert data["prompt"] == "" and data["positive_prompt"] == "" and data["images"]
        assert data["seed"] is None  # upscale has no seed: none is made up

        blank = await session.call_tool("generate_image", {"render_type": "sdxl", "prompt": "  "})
        assert blank.is_error and blank.structured_content is not None
        error = blank.structured_content["error"]
        assert error["field"] == "prompt" and "'sdxl' takes a prompt" in error["message"], error


# -- retention ----------------------------------------------------------------------------------------------


async def test_images_removed_by_retention_are_reported_as_removed_with_when(gw: GatewayHub) -> None:
    if "stats" not in gw.hub.processes:
        await gw.hub.start("stats").wait_healthy(gw.nc)
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        jobs = []
        for prompt in ("an old harbour", "a new harbour"):
            submitted = await api.post("/api/v1/generations", json={"prompt": prompt, "count": 2})
            assert submitted.status_code == 202, submitted.text
            jobs.append(submitted.json()["job_id"])
        old, young = jobs
        for job_id in jobs:
            await wait_for_done(api, job_id)
        before = (await api.get(f"/api/v1/generations/{old}")).json()["images"]
        assert len(before) == 2 and all(i["url"] and not i["removed"] and i["removed_at"] is None for i in before)

        started = time.time()
        report = await retention_removes_images_of(gw.hub, old)
        assert (report.images_removed, report.jobs_cleared, report.error) == (2, 1, None), report

        view = (await api.get(f"/api/v1/generations/{old}")).json()
        images = view["images"]
        assert [i["output_id"] for i in images] == [i["output_id"] for i in before]
        for image in images:
            assert image["removed"] is True and image["url"] is None, image
            assert started <= image["removed_at"] <= time.time()
        for image in before:  # what the view no longer links to is really gone
            assert (await api.get(image["url"])).status_code == 404
        kept = (await api.get(f"/api/v1/generations/{young}")).json()["images"]
        assert len(kept) == 2 and not any(i["removed"] for i in kept)
        assert [(await api.get(i["url"])).status_code for i in kept] == [200, 200]

    async with Mcp(gw) as session:
        result = await session.call_tool("get_generation", {"job_id": old})
        assert not result.is_error and result.structured_content is not None
        assert result.structured_content["images"] == images
        text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
        assert "2 of 2 image(s) removed by retention" in text, text
        # Neither a link nor a preview of an image that is gone.
        assert not [c for c in result.content if isinstance(c, (types.ResourceLink, types.ImageContent))]
        fresh = await session.call_tool("get_generation", {"job_id": young})
        assert len([c for c in fresh.content if isinstance(c, types.ResourceLink)]) == 2


async def wait_for_done(api: httpx.AsyncClient, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while (view := (await api.get(f"/api/v1/generations/{job_id}")).json())["status"] != "completed":
        assert not view["done"] and time.monotonic() < deadline, view
        await asyncio.sleep(0.05)


async def test_a_node_only_generation_notifies_progress_from_the_start_and_every_second(gw: GatewayHub) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 10, 10)).save(picture, format="PNG")
    image = {"base64": base64.b64encode(picture.getvalue()).decode()}
    arrivals: list[tuple[float, float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        arrivals.append((time.monotonic(), value, message))

    gw.comfy.work_seconds = 2.8  # upscale: a few image nodes, not one sampler step (within this module's 4 s budget)
    try:
        async with Mcp(gw) as session:
            called = time.monotonic()
            result = await session.call_tool(
                "generate_image", {"render_type": "upscale", "input_image": image}, progress_callback=on_progress
            )
            returned = time.monotonic()
    finally:
        gw.comfy.work_seconds = 0.2
    assert not result.is_error and result.structured_content["status"] == "completed", result.content
    assert returned - called > 2.8 and arrivals, arrivals
    values = [value for _, value, _ in arrivals]
    assert all(later > earlier for earlier, later in itertools.pairwise(values)), values  # as MCP asks
    assert values[-1] == 100.0 and any(0 < v < 100 for v in values)
    stamps = [called + 0.1, *(at for at, _, _ in arrivals)]  # the job starts a moment after the call
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert max(gaps) < 1.35, gaps  # the first soon after the start, then at least one a second
    assert len(arrivals) < 10 * (returned - called) + 2  # and still thinned
    assert any("node" in (message or "") for _, _, message in arrivals), arrivals
    job_id = result.structured_content["job_id"]
    view = await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
    assert view.progress.percent == 100  # the finished job shows its end


async def test_generate_image_with_the_same_idempotency_key_returns_the_first_job(gw: GatewayHub) -> None:
    """A client that lost generate_image's answer calls it again with the same `idempotency_key`: it gets the job
    made the first time; the same key with other arguments is a tool error naming the argument."""
    key = str(uuid.uuid4())
    arguments = {"prompt": "a paper boat", "steps": 4, "idempotency_key": key}
    async with Mcp(gw) as session:
        first = await session.call_tool("generate_image", arguments)
        again = await session.call_tool("generate_image", arguments)
        changed = await session.call_tool("generate_image", {**arguments, "prompt": "a paper plane"})
    assert not first.is_error and not again.is_error, (first.content, again.content)
    assert first.structured_content is not None and again.structured_content is not None
    job_id = first.structured_content["job_id"]
    assert again.structured_content["job_id"] == job_id and again.structured_content["status"] == "completed"
    assert [p for p in gw.comfy.history if p.startswith(f"{job_id}-")] == [f"{job_id}-1"]
    assert changed.is_error and changed.structured_content is not None, changed.content
    error = changed.structured_content["error"]
    assert error["code"] == "conflict" and error["field"] == "idempotency_key" and job_id in error["message"], error
