"""MCP tasks on the gateway, both eras, over raw Streamable HTTP (the official SDK client has no tasks API):
2025-11-25 core tasks (`params.task`, tasks/get, tasks/result, tasks/cancel) and the 2026-07-28 tasks extension
(`resultType: "task"`, tasks/get with the result inlined, tasks/update, tasks/cancel, -32021)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
from gateway_support import MCP_ACCEPT, GatewayHub, mcp_initialize
from harness import polled
from test_gateway_mcp import sse_or_json

from contracts import endpoints
from contracts.messages.jobs import GetJob, JobView, ListJobs, QueueViewRequest
from contracts.messages.keys import CreateApiKey
from contracts.messages.styles import SaveStyle, Style
from contracts.runtime.bus import call

pytestmark = pytest.mark.slow

TASKS = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"


@pytest.fixture
async def http(gw: GatewayHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
        yield client


class Legacy:
    """A raw 2025-11-25 session (initialize, then requests with the session id)."""

    def __init__(self, http: httpx.AsyncClient, gw: GatewayHub, secret: str | None = None) -> None:
        self.http, self.gw = http, gw
        self.auth = {"Authorization": f"Bearer {secret or gw.key.secret}"}
        self.headers: dict[str, str] = {}
        self.capabilities: dict[str, Any] = {}
        self._id = 1

    async def start(self) -> Legacy:
        init = mcp_initialize("2025-11-25", request_id=0, client="t")
        answer = await self.http.post("/mcp", json=init, headers={**MCP_ACCEPT, **self.auth})
        result = sse_or_json(answer)["result"]
        assert result["protocolVersion"] == "2025-11-25"
        self.capabilities = result["capabilities"]
        self.headers = {**MCP_ACCEPT, **self.auth, "MCP-Protocol-Version": "2025-11-25"}
        if "mcp-session-id" in answer.headers:
            self.headers["Mcp-Session-Id"] = answer.headers["mcp-session-id"]
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post("/mcp", json=done, headers=self.headers)).status_code == 202
        return self

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        message = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}
        return sse_or_json(await self.http.post("/mcp", json=message, headers=self.headers))


async def modern(
    http: httpx.AsyncClient,
    gw: GatewayHub,
    method: str,
    params: dict[str, Any],
    *,
    tasks: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """One self-contained 2026-07-28 request (no session), declaring the tasks extension unless told not to.

    `Mcp-Name` carries the tool name or task id as the transport requires, unless `name` says otherwise."""
    capabilities: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    }
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    headers = {**MCP_ACCEPT, **gw.auth, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    name = params.get("name") or params.get("taskId") if name is None else name
    if name:
        headers["Mcp-Name"] = name
    answer = await http.post("/mcp", json=message, headers=headers)
    assert answer.status_code in (200, 400, 404), answer.text
    return sse_or_json(answer)


async def wait_status(gw: GatewayHub, job_id: str, *statuses: str, within_s: float = 30) -> JobView:
    ask = partial(call, gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
    return await polled(ask, lambda view: view.status in statuses, within_s=within_s)


# -- 2025-11-25 ------------------------------------------------------------------------------------------


async def test_legacy_tasks_are_announced_and_generate_image_runs_as_one(
    gw: GatewayHub, http: httpx.AsyncClient
) -> None:
    session = await Legacy(http, gw).start()
    assert session.capabilities["tasks"]["requests"]["tools"]["call"] == {}
    assert "cancel" in session.capabilities["tasks"]
    tools = {t["name"]: t for t in (await session.call("tools/list", {}))["result"]["tools"]}
    assert tools["generate_image"]["execution"] == {"taskSupport": "optional"}
    assert "execution" not in tools["list_styles"]

    created = await session.call(
        "tools/call", {"name": "generate_image", "arguments": {"prompt": "a lighthouse"}, "task": {"ttl": 60000}}
    )
    task = created["result"]["task"]
    assert task["status"] == "working" and task["createdAt"].endswith("Z") and task["pollInterval"] > 0
    job_id = task["taskId"]
    assert (await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))).prompt == "a lighthouse"

    # tasks/result waits for the end and gives the tool result, tied to the task.
    result = (await session.call("tasks/result", {"taskId": job_id}))["result"]
    assert result["structuredContent"]["status"] == "completed" and result["structuredContent"]["job_id"] == job_id
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": job_id}
    assert any(c["type"] == "resource_link" for c in result["content"])
    got = (await session.call("tasks/get", {"taskId": job_id}))["result"]
    assert got["taskId"] == job_id and got["status"] == "completed"

    refused = await session.call("tasks/cancel", {"taskId": job_id})
    assert refused["error"]["code"] == -32602 and "already completed" in refused["error"]["message"]
    unknown = await session.call("tasks/get", {"taskId": "no-such-task"})
    assert unknown["error"]["code"] == -32602


async def test_legacy_task_cancel_and_refusals(gw: GatewayHub, http: httpx.AsyncClient) -> None:
    session = await Legacy(http, gw).start()
    not_a_task_tool = await session.call("tools/call", {"name": "list_styles", "arguments": {}, "task": {}})
    assert not_a_task_tool["error"]["code"] == -32601 and "generate_image" in not_a_task_tool["error"]["message"]
    bad = await session.call("tools/call", {"name": "generate_image", "arguments": {"prompt": ""}, "task": {}})
    assert bad["error"]["code"] == -32602 and bad["error"]["data"]["field"] == "prompt"
    unknown_style = await session.call(
        "tools/call", {"name": "generate_image", "arguments": {"prompt": "x", "styles": ["Nope"]}, "task": {}}
    )
    assert unknown_style["error"]["code"] == -32602 and "Nope" in unknown_style["error"]["message"]

    gw.comfy.work_seconds = 20.0
    try:
        created = await session.call(
            "tools/call", {"name": "generate_image", "arguments": {"prompt": "slow dunes", "steps": 40}, "task": {}}
        )
        job_id = created["result"]["task"]["taskId"]
        await wait_status(gw, job_id, "running")
        cancelled = (await session.call("tasks/cancel", {"taskId": job_id}))["result"]
        assert cancelled["taskId"] == job_id and cancelled["status"] in ("working", "cancelled")
        await wait_status(gw, job_id, "cancelled")
        assert (await session.call("tasks/get", {"taskId": job_id}))["result"]["status"] == "cancelled"
    finally:
        gw.comfy.work_seconds = 0.2

    # Another key does not see this key's task.
    other = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="other"))
    stranger = await Legacy(http, gw, other.secret).start()
    assert (await stranger.call("tasks/get", {"taskId": job_id}))["error"]["code"] == -32602


async def test_legacy_tasks_list_shows_the_callers_tasks_newest_first(gw: GatewayHub, http: httpx.AsyncClient) -> None:
    mine = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="lister"))
    theirs = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="neighbour"))
    session, neighbour = await Legacy(http, gw, mine.secret).start(), await Legacy(http, gw, theirs.secret).start()
    assert session.capabilities["tasks"]["list"] == {}
    assert (await session.call("tasks/list", {}))["result"] == {"tasks": []}

    async def task(caller: Legacy, prompt: str) -> str:
        created = await caller.call(
            "tools/call", {"name": "generate_image", "arguments": {"prompt": prompt}, "task": {}}
        )
        return created["result"]["task"]["taskId"]

    made = [await task(session, f"a quiet harbour, take {n}") for n in range(3)]
    other = await task(neighbour, "somebody else's harbour")
    listed = (await session.call("tasks/list", {}))["result"]
    assert [t["taskId"] for t in listed["tasks"]] == made[::-1] and "nextCursor" not in listed
    assert all(t["status"] in ("working", "completed") and t["createdAt"].endswith("Z") for t in listed["tasks"])
    assert [t["taskId"] for t in (await neighbour.call("tasks/list", {}))["result"]["tasks"]] == [other]

    # Pages: the dispatcher's listing behind it, two at a time, goes on from each page's mark.
    first = await call(gw.nc, endpoints.Dispatch.JOBS_LIST, ListJobs(api_key_id=mine.key.key_id, limit=2))
    assert [v.job_id for v in first.jobs] == [made[2], made[1]] and first.next_after
    rest = ListJobs(api_key_id=mine.key.key_id, limit=2, after=first.next_after)
    second = await call(gw.nc, endpoints.Dispatch.JOBS_LIST, rest)
    assert [v.job_id for v in second.jobs] == [made[0]] and second.next_after is None

    bad = await session.call("tasks/list", {"cursor": "not-a-cursor"})
    assert bad["error"]["code"] == -32602 and "cursor" in bad["error"]["message"]
    assert (await modern(http, gw, "tasks/list", {}))["error"]["code"] == -32601
    for job_id in [*made, other]:
        await wait_status(gw, job_id, "completed")


# -- 2026-07-28 ------------------------------------------------------------------------------------------


async def test_modern_discover_announces_the_tasks_extension(gw: GatewayHub, http: httpx.AsyncClient) -> None:
    discovered = (await modern(http, gw, "server/discover", {}))["result"]
    assert discovered["resultType"] == "complete"
    assert discovered["capabilities"]["resources"] == {"subscribe": True, "listChanged": False}
    assert MODERN in discovered["supportedVersions"]
    assert discovered["capabilities"]["extensions"][TASKS] == {}
    assert "tasks" not in discovered["capabilities"]  # the 2025-11-25 capability is not on this wire


async def test_modern_generate_image_returns_a_task_then_tasks_get_inlines_the_result(
    gw: GatewayHub, http: httpx.AsyncClient
) -> None:
    created = (await modern(http, gw, "tools/call", {"name": "generate_image", "arguments": {"prompt": "a fox"}}))[
        "result"
    ]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert created["ttlMs"] is None and created["pollIntervalMs"] > 0
    job_id = created["taskId"]

    missing = await modern(http, gw, "tasks/get", {"taskId": job_id}, tasks=False)
    assert missing["error"]["code"] == -32021
    assert missing["error"]["data"] == {"requiredCapabilities": {"extensions": {TASKS: {}}}}

    deadline = time.monotonic() + 30
    while True:
        got = (await modern(http, gw, "tasks/get", {"taskId": job_id}))["result"]
        assert got["resultType"] == "complete" and got["taskId"] == job_id
        if got["status"] != "working":
            break
        assert "result" not in got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.1)
    assert got["status"] == "completed"
    assert got["result"]["structuredContent"]["job_id"] == job_id and not got["result"].get("isError")
    assert any(c["type"] == "resource_link" for c in got["result"]["content"])

    ack = await modern(http, gw, "tasks/update", {"taskId": job_id, "inputResponses": {}})
    assert ack["result"]["resultType"] == "complete"
    assert (await modern(http, gw, "tasks/cancel", {"taskId": job_id}))["result"]["resultType"] == "complete"
    assert (await modern(http, gw, "tasks/get", {"taskId": "nope"}))["error"]["code"] == -32602
    mismatch = await modern(http, gw, "tasks/get", {"taskId": job_id}, name="another-task")
    assert mismatch["error"]["code"] == -32020 and "Mcp-Name" in mismatch["error"]["message"]
    assert (await modern(http, gw, "tasks/result", {"taskId": job_id}))["error"]["code"] == -32601


async def test_modern_without_the_extension_gets_a_plain_result_and_a_failure_is_a_completed_task(
    gw: GatewayHub, http: httpx.AsyncClient
) -> None:
    plain = await modern(
        http, gw, "tools/call", {"name": "generate_image", "arguments": {"prompt": "a cat"}}, tasks=False
    )
    assert "result" in plain, plain
    assert plain["result"]["resultType"] == "complete" and plain["result"]["structuredContent"]["status"] == "completed"

    # A generation that fails is a tool result with isError, so the task is `completed` with that result.
    gw.comfy.fail_next_job()
    created = await modern(http, gw, "tools/call", {"name": "generate_image", "arguments": {"prompt": "doomed"}})
    job_id = created["result"]["taskId"]
    await wait_status(gw, job_id, "failed")
    got = (await modern(http, gw, "tasks/get", {"taskId": job_id}))["result"]
    assert got["status"] == "completed" and got["result"]["isError"] is True
    assert got["result"]["structuredContent"]["status"] == "failed"

    gw.comfy.work_seconds = 20.0
    try:
        created = (
            await modern(
                http, gw, "tools/call", {"name": "generate_image", "arguments": {"prompt": "slow", "steps": 40}}
            )
        )["result"]
        job_id = created["taskId"]
        await wait_status(gw, job_id, "running")
        ack = (await modern(http, gw, "tasks/cancel", {"taskId": job_id}))["result"]
        assert ack["resultType"] == "complete" and "taskId" not in ack  # an empty acknowledgement
        await wait_status(gw, job_id, "cancelled")
        got = (await modern(http, gw, "tasks/get", {"taskId": job_id}))["result"]
        assert got["status"] == "cancelled" and "result" not in got
    finally:
        gw.comfy.work_seconds = 0.2


async def test_modern_requests_are_checked_against_their_headers_and_version(
    gw: GatewayHub, http: httpx.AsyncClient
) -> None:
    tool_call = {"name": "list_styles", "arguments": {}}
    wrong_name = await modern(http, gw, "tools/call", tool_call, name="list_render_types")
    assert wrong_name["error"]["code"] == -32020

    meta = {
        "io.modelcontextprotocol/protocolVersion": "2099-01-01",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    future = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": meta}}
    headers = {**MCP_ACCEPT, **gw.auth, "MCP-Protocol-Version": "2099-01-01", "Mcp-Method": "tools/list"}
    answer = await http.post("/mcp", json=future, headers=headers)
    assert answer.status_code == 400
    error = sse_or_json(answer)["error"]
    assert error["code"] == -32022 and MODERN in json.dumps(error)  # says which versions it speaks


# -- subscriptions/listen (2026-07-28) --------------------------------------------------------------------


class ListenStream:
    """A raw `subscriptions/listen` request; its SSE response is read frame by frame."""

    def __init__(self, http: httpx.AsyncClient, gw: GatewayHub, notifications: dict[str, Any], request_id: int) -> None:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
        }
        self._request = http.stream(
            "POST",
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "subscriptions/listen",
                "params": {"notifications": notifications, "_meta": meta},
            },
            headers={**MCP_ACCEPT, **gw.auth, "MCP-Protocol-Version": MODERN, "Mcp-Method": "subscriptions/listen"},
        )

    async def __aenter__(self) -> ListenStream:
        self.response = await self._request.__aenter__()
        assert self.response.status_code == 200
        if not self.response.headers["content-type"].startswith("text/event-stream"):
            raise AssertionError((await self.response.aread()).decode())
        self._lines = self.response.aiter_lines()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._request.__aexit__(None, None, None)

    async def next_frame(self, within_s: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            async for line in self._lines:
                if line.startswith("data:") and line[5:].strip():
                    return json.loads(line[5:])
        raise AssertionError("the listen stream ended")


async def test_listen_streams_resource_updates_and_task_status(gw: GatewayHub, http: httpx.AsyncClient) -> None:
    gw.comfy.work_seconds = 3.0
    try:
        created = await modern(http, gw, "tools/call", {"name": "generate_image", "arguments": {"prompt": "owl"}})
        job_id = created["result"]["taskId"]
        wanted = {
            "resourceSubscriptions": ["hub://styles", "hub://render-types", "hub://nothing"],
            "taskIds": [job_id, "nope"],
        }
        async with ListenStream(http, gw, wanted, request_id=77) as stream:
            ack = await stream.next_frame()
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            assert ack["params"]["notifications"] == {
                "resourceSubscriptions": ["hub://styles", "hub://render-types"],
                "taskIds": [job_id],
            }
            assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 77
            first = await stream.next_frame()
            assert first["method"] == "notifications/tasks" and first["params"]["taskId"] == job_id
            assert first["params"]["status"] == "working"

            await call(gw.nc, endpoints.Prompt.STYLES_SAVE, SaveStyle(style=Style(name="Listen Test")))
            frames = [await stream.next_frame()]
            while not (frames[-1]["method"] == "notifications/tasks" and frames[-1]["params"]["status"] == "completed"):
                frames.append(await stream.next_frame())
            updates = [f for f in frames if f["method"] == "notifications/resources/updated"]
            assert updates and updates[0]["params"]["uri"] == "hub://styles"
            done = frames[-1]["params"]
            assert done["result"]["structuredContent"]["job_id"] == job_id
            assert all(f["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 77 for f in frames)
            assert all(f["method"] != "notifications/progress" for f in frames)
    finally:
        gw.comfy.work_seconds = 0.2


async def test_listen_for_tasks_needs_the_extension(gw: GatewayHub, http: httpx.AsyncClient) -> None:
    refused = await modern(http, gw, "subscriptions/listen", {"notifications": {"taskIds": ["x"]}}, tasks=False)
    assert refused["error"]["code"] == -32021


# -- disconnects ---------------------------------------------------------------------------------------------


async def test_a_handshake_era_client_that_disconnects_does_not_lose_the_job(
    gw: GatewayHub, http: httpx.AsyncClient
) -> None:
    """2025 era: a dropped response stream is not a cancellation; the job runs on and get_generation finds it.
    (On 2026-07-28 closing the stream IS the cancellation, by the spec: such clients use tasks.)"""
    session = await Legacy(http, gw).start()
    gw.comfy.work_seconds = 2.0
    try:
        tool_call = {
            "jsonrpc": "2.0",
            "id": 99,
            "method": "tools/call",
            "params": {"name": "generate_image", "arguments": {"prompt": "left alone"}},
        }
        async with asyncio.timeout(30):
            async with http.stream("POST", "/mcp", json=tool_call, headers=session.headers) as response:
                assert response.status_code == 200
                job_id = None
                while job_id is None:
                    queue = await call(gw.nc, endpoints.Dispatch.QUEUE_VIEW, QueueViewRequest(include_finished=True))
                    job_id = next((j.job_id for j in queue.jobs if j.prompt == "left alone"), None)
                    await asyncio.sleep(0.05)
            # the stream is closed here, long before the job ends
        view = await wait_status(gw, job_id, "completed", "cancelled", "failed")
        assert view.status == "completed"
        fetched = await session.call("tools/call", {"name": "get_generation", "arguments": {"job_id": job_id}})
        assert fetched["result"]["structuredContent"]["status"] == "completed"
    finally:
        gw.comfy.work_seconds = 0.2
