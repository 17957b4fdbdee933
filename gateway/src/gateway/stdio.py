"""`python -m gateway.stdio`: a bridge for desktop MCP clients that only speak stdio.

It relays every JSON-RPC message between this process's stdin/stdout (the SDK's stdio server transport) and the
running hub's Streamable HTTP endpoint (the SDK's HTTP client transport), adding the API key and the HTTP headers
each message needs: `MCP-Protocol-Version` (the version a handshake negotiated, or the one a 2026-07-28 request
names in `_meta`), `Mcp-Method` and `Mcp-Name`. A hub that cannot be reached, or that answers with an HTTP error,
becomes a JSON-RPC error for the request at once, so the client is never left waiting. The hub does all the work.

    python -m gateway.stdio --url http://127.0.0.1:8600/mcp --key ghub_...   (or HUB_API_KEY in the environment)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
)
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import PROTOCOL_VERSION_META_KEY

KEY_ENV = "HUB_API_KEY"
URL_ENV = "HUB_MCP_URL"
BRIDGE_ERROR = -32000  # server-defined JSON-RPC code: the bridge could not get an answer from the hub
# The params key each method routes by (Mcp-Name): the SDK's list, plus the tasks extension's task id.
ROUTED_BY = {**NAME_BEARING_METHODS, **dict.fromkeys(("tasks/get", "tasks/cancel", "tasks/update"), "taskId")}


class HubAnswers(httpx2.AsyncBaseTransport):
    """The HTTP transport to the hub, turning what the SDK would raise or blur into a JSON-RPC error it relays:
    a hub that cannot be reached (the SDK's task would die with the bridge), and an HTTP error whose body is not a
    JSON-RPC error (the SDK would answer a bare "Server returned an error response")."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            what = "cannot reach the hub" if isinstance(exc, httpx2.ConnectError) else "lost the connection to the hub"
            return _error_response(
                502,
                f"{what} at {self._url} ({type(exc).__name__}: {exc or 'no detail'}); is the hub running "
                f"there? Check --url or {URL_ENV}",
            )
        if response.status_code < 400 or response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        body = await response.aread()
        await response.aclose()
        if _is_json_rpc_error(body):
            return httpx2.Response(response.status_code, headers=response.headers, content=body)
        return _error_response(
            response.status_code, f"the hub at {self._url} answered HTTP {response.status_code}: {_said(body)}"
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def _error_response(status: int, message: str) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": BRIDGE_ERROR, "message": message}}
    return httpx2.Response(status, json=body)


def _is_json_rpc_error(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "id" in parsed


def _said(body: bytes) -> str:
    """The message in a hub error body (`{"error": {"message": ...}}`), or its text."""
    try:
        parsed = json.loads(body)
        return str(parsed["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:300] or "no message"


class Relay:
    """What the bridge remembers between messages: the version a handshake negotiated."""

    def __init__(self) -> None:
        self._initialize_ids: set[types.RequestId] = set()
        self.negotiated: str | None = None

    def to_hub(self, received: SessionMessage) -> SessionMessage:
        message = received.message
        headers = self._headers(message)
        return SessionMessage(message, ClientMessageMetadata(headers=headers) if headers else None)

    def from_hub(self, received: SessionMessage) -> SessionMessage:
        """Passed on as it came; the answer to `initialize` tells the version the session speaks."""
        message = received.message
        if isinstance(message, types.JSONRPCResponse) and message.id in self._initialize_ids:
            self._initialize_ids.discard(message.id)
            version = (message.result or {}).get("protocolVersion")
            self.negotiated = version if isinstance(version, str) else None
        return received

    def _headers(self, message: types.JSONRPCMessage) -> dict[str, str]:
        if not isinstance(message, types.JSONRPCRequest | types.JSONRPCNotification):
            return {MCP_PROTOCOL_VERSION_HEADER: self.negotiated} if self.negotiated else {}
        params = message.params or {}
        if message.method == "initialize":
            if isinstance(message, types.JSONRPCRequest):
                self._initialize_ids.add(message.id)
            return {}
        meta = params.get("_meta")
        version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
        if not isinstance(version, str):  # handshake era: the session's version
            return {MCP_PROTOCOL_VERSION_HEADER: self.negotiated} if self.negotiated else {}
        headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: message.method}
        name = params.get(ROUTED_BY.get(message.method, ""))
        if isinstance(name, str):
            headers[MCP_NAME_HEADER] = encode_header_value(name)
        return headers


async def _pass_on(source: Any, sink: Any, side: str, forward: Callable[[SessionMessage], SessionMessage]) -> None:
    """Send every message of `source` (coming from `side`) to `sink` as `forward` makes it; one that could not be
    read is told on stderr and skipped."""
    async with sink:
        async for message in source:
            if isinstance(message, Exception):
                print(f"gateway.stdio: from the {side}: {message}", file=sys.stderr, flush=True)
                continue
            await sink.send(forward(message))


async def bridge(url: str, key: str) -> None:
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),  # the SDK's defaults
        transport=HubAnswers(url),
    )
    relay = Relay()
    try:
        async with (
            http,
            streamable_http_client(url, http_client=http) as (hub_read, hub_write),
            stdio_server() as (local_read, local_write),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(_pass_on, local_read, hub_write, "client", relay.to_hub)
            await _pass_on(hub_read, local_write, "hub", relay.from_hub)
            tasks.cancel_scope.cancel()
    except* anyio.ClosedResourceError:
        pass  # the client closed stdin while a request was in flight: nobody is left to answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.stdio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8600/mcp"), help="hub MCP URL")
    parser.add_argument("--key", default=os.environ.get(KEY_ENV), help=f"API key (default: ${KEY_ENV})")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error(f"an API key is required: pass --key or set {KEY_ENV} (create one in the admin UI)")
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url {args.url!r} must be the hub's MCP URL, e.g. http://127.0.0.1:8600/mcp")
    try:
        anyio.run(bridge, args.url, args.key)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the client's log, not a traceback
        print(f"gateway.stdio: stopped: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
