"""The HTTP answers of /mcp that standard MCP clients need and the SDK's transport does not give.

- A missing or wrong API key: a JSON-RPC error saying so (the SDK client shows a JSON-RPC error body of a 401
  as the error; any other body becomes a bare "Server returned an error response"), and a `WWW-Authenticate`
  challenge with `error="invalid_token"` and a description, without OAuth metadata (the hub has no OAuth).
- A rejected request that came without `Mcp-Session-Id` carries none back: the SDK names a session it never
  created.
- A handshake session (`Mcp-Session-Id`) with an `MCP-Protocol-Version` the hub does not speak there gets a
  message about versions (the SDK would take the request for a 2026-07-28 one and talk about `_meta`).
- `initialize` with a version the hub does not list is negotiated to the hub's own newest version (the spec's
  rule); the SDK would also accept 2024-11-05, which has no Streamable HTTP.
- A JSON-RPC batch on a 2025-03-26 session (the only revision with batches) is answered as that revision says:
  every message handled, the responses in one JSON array, 202 when it held no request.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

MCP_PATH = "/mcp"
HANDSHAKE_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")  # what the hub lists (README)
MODERN_VERSION = "2026-07-28"
BATCH_VERSION = "2025-03-26"  # batches were removed in 2025-06-18
INVALID_REQUEST = -32600
UNAUTHORIZED = -32001  # server-defined JSON-RPC code: the API key is missing or not valid
REALM = "genimage-hub"

Send = Any
Headers = dict[str, str]


def json_rpc_error(request_id: object, code: int, message: str, data: object = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def key_problem(authorization: str) -> str:
    if not authorization:
        return "invalid API key: none was sent; send `Authorization: Bearer <key>` (create a key in the admin UI)"
    return "invalid API key: the key is not valid or was revoked (create a key in the admin UI)"


def key_challenge(problem: str) -> bytes:
    """RFC 6750 challenge: `error="invalid_token"` tells a client the key is wrong, not that it should log in."""
    description = problem.replace("\\", "").replace('"', "'")
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'.encode()


def key_refusal_body(path: str, problem: str) -> dict[str, Any]:
    if path.rstrip("/") == MCP_PATH:
        return json_rpc_error(None, UNAUTHORIZED, problem, {"code": "unauthorized"})
    return {"error": {"code": "unauthorized", "message": problem}}


def session_version_problem(headers: Headers) -> str | None:
    """A request on a handshake session whose MCP-Protocol-Version is not a handshake version the hub speaks."""
    version = headers.get("mcp-protocol-version")
    if "mcp-session-id" not in headers or version is None or version in HANDSHAKE_VERSIONS:
        return None
    listed = ", ".join(HANDSHAKE_VERSIONS)
    if version == MODERN_VERSION:
        return (
            f"Bad Request: MCP-Protocol-Version {version} has no sessions: send it without Mcp-Session-Id, or send "
            f"the version this session negotiated in initialize ({listed})"
        )
    return (
        f"Bad Request: unsupported MCP-Protocol-Version {version!r}; a session (Mcp-Session-Id) speaks the version "
        f"it negotiated in initialize, one of {listed}"
    )


def negotiated_initialize(message: object) -> object:
    """`initialize` asking for a version the hub does not list asks, instead, for the hub's newest one, which the
    SDK then answers: the spec's counter-offer."""
    if not isinstance(message, dict) or message.get("method") != "initialize":
        return message
    params = message.get("params")
    if not isinstance(params, dict) or params.get("protocolVersion") in HANDSHAKE_VERSIONS:
        return message
    if not isinstance(params.get("protocolVersion"), str):
        return message  # the SDK names the missing field
    return {**message, "params": {**params, "protocolVersion": HANDSHAKE_VERSIONS[-1]}}


def without_orphan_session_id(send: Send) -> Send:
    """`send` for a request that came without a session: an error answer names no session."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            message = {**message, "headers": [(k, v) for k, v in message["headers"] if k.lower() != b"mcp-session-id"]}
        await send(message)

    return wrapped


def batch_allowed(headers: Headers) -> bool:
    """Batches belong to 2025-03-26 sessions: the version header says so, or is absent (the spec's default)."""
    return "mcp-session-id" in headers and headers.get("mcp-protocol-version", BATCH_VERSION) == BATCH_VERSION


def batch_refusal(headers: Headers) -> str:
    if "mcp-session-id" not in headers:
        return "Invalid Request: a JSON-RPC batch needs a 2025-03-26 session: send initialize on its own first"
    return (
        f"Invalid Request: JSON-RPC batches exist only in protocol version {BATCH_VERSION}; this session speaks "
        f"{headers.get('mcp-protocol-version')}: send one message per POST"
    )


def _responses_in(content_type: str, body: bytes) -> list[Any]:
    """The JSON-RPC responses in one answer of the SDK (a JSON body, or an SSE stream of messages)."""
    if content_type.startswith("application/json"):
        payloads = [body]
    elif content_type.startswith("text/event-stream"):
        payloads = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:") and line[5:].strip()]
    else:
        return []
    found = []
    for payload in payloads:
        try:
            message = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            continue
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            found.append(message)
    return found


async def _answer_of(app: Any, scope: dict[str, Any], message: object) -> list[Any]:
    """Hand one message of a batch to the app as its own POST; the responses it answered."""
    body = msgspec.json.encode(message)
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    one_scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    sent = False
    status_headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            status_headers.extend(event.get("headers", []))
        elif event["type"] == "http.response.body":
            chunks.append(event.get("body", b""))

    await app(one_scope, receive, send)
    content_type = next((v.decode("latin-1") for k, v in status_headers if k.lower() == b"content-type"), "")
    return _responses_in(content_type.lower(), b"".join(chunks))


async def answer_batch(app: Any, scope: dict[str, Any], batch: list[Any], is_message: Any) -> tuple[int, Any]:
    """A 2025-03-26 batch: each message handled (concurrently); the status and JSON body to answer (202: none)."""
    if any(isinstance(m, dict) and m.get("method") == "initialize" for m in batch):
        return 400, json_rpc_error(None, INVALID_REQUEST, "Invalid Request: initialize must not be part of a batch")
    responses: list[Any] = []

    async def handle(message: object) -> None:
        if not is_message(message):
            responses.append(json_rpc_error(None, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message"))
            return
        responses.extend(await _answer_of(app, scope, message))

    async with anyio.create_task_group() as group:
        for message in batch:
            group.start_soon(handle, message)
    return (200, responses) if responses else (202, None)
