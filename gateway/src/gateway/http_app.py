"""The gateway's HTTP application: MCP at /mcp, images at /images/<output_id>, health probes.

Two ASGI layers in front of litestar: the shared HostGuard checks `Host` and `Origin` against their allowlists
(DNS-rebinding defence, HUB_GATEWAY_ALLOWED_HOSTS / _ORIGINS) on every path but the health probes; then, for /mcp
and /api, the `Authorization: Bearer <API key>` header and the body's shape.
Image URLs need no key: an output id is a 128-bit secret, so the URL itself is the capability (it can be
shown in a browser or fetched by a client that has no key, like any signed link).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Litestar, Request, get
from litestar.datastructures import State
from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.handlers import asgi
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import Response, Stream

from contracts.errors import ErrorCode, HubError
from contracts.runtime.bus import require_connection
from contracts.runtime.host_guard import HostGuard, json_refusal, policy_of
from contracts.runtime.metrics import gather, merge
from contracts.runtime.output_http import output_reply
from contracts.runtime.service import ServiceRuntime
from gateway import __version__
from gateway.api_document import ContractJsonRenderPlugin
from gateway.http_metrics import MCP_METHOD_SCOPE_KEY, METRICS_CONTENT_TYPE, METRICS_PATH, HttpMeter, MetricsAllow
from gateway.hub_client import HubClient
from gateway.mcp_http import (
    INVALID_REQUEST,
    MCP_PATH,
    answer_batch,
    batch_allowed,
    batch_refusal,
    json_rpc_error,
    key_challenge,
    key_problem,
    key_refusal_body,
    negotiated_initialize,
    session_version_problem,
    without_orphan_session_id,
)
from gateway.mcp_server import API_KEY_SCOPE_KEY, MAX_REQUEST_BODY_BYTES, HubMcp
from gateway.rest import (
    API_PREFIX,
    EXCEPTION_HANDLERS,
    CatalogController,
    GenerationsController,
    before_api_request,
    error_body,
)
from gateway.store import ApiKeyStore
from gateway.webhooks import Webhooks

PROTECTED_PREFIXES = ("/mcp", "/api/")
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
PUBLIC_PATHS = (OPENAPI_PATH,)  # the OpenAPI document describes the API; it needs no key
FORBIDDEN = -32003  # server-defined JSON-RPC code: the request's Host or Origin is not allowed
_NOT_JSON = object()
BODY_METHODS = ("POST", "PUT", "PATCH")
TOO_DEEP = "the JSON nests too deeply to be decoded; send a flatter document"


async def _send_json(
    send: Any, status: int, body: dict[str, Any] | list[Any] | msgspec.Struct, headers: list[tuple[bytes, bytes]]
) -> None:
    payload = msgspec.json.encode(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _buffered_body(receive: Any, send: Any) -> tuple[bytes, Any] | Any:
    """(the whole body, a `receive` that replays it), `receive` itself when the client went away, or None when the
    body is over MAX_REQUEST_BODY_BYTES (413 sent)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return receive  # the client went away; let the app see it
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_REQUEST_BODY_BYTES:
            text = f"the request body is larger than {MAX_REQUEST_BODY_BYTES // (1024 * 1024)} MiB"
            await _send_json(send, 413, error_body("too_large", text), [])
            return None
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, _replay(body, receive)


def _replaying(scope: dict[str, Any], body: bytes, receive: Any) -> Any:
    """A `receive` that gives the app `body` in place of the one sent (its Content-Length set to match)."""
    kept = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    scope["headers"] = [*kept, (b"content-length", str(len(body)).encode())]
    return _replay(body, receive)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that gives `body` as the whole request body first, then whatever `receive` gives."""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_json_rpc_message(value: object) -> bool:
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        return False
    if "id" in value and (isinstance(value["id"], bool) or not isinstance(value["id"], (str, int))):
        return False
    if "method" in value:
        return isinstance(value["method"], str) and isinstance(value.get("params", {}), dict)
    return "id" in value and ("result" in value or "error" in value)


def host_refusal(path: str, message: str, header: str) -> tuple[bytes, bytes]:
    """A JSON-RPC error on /mcp (MCP clients show its message), the JSON error envelope elsewhere."""
    if path.rstrip("/") == MCP_PATH:
        body = json_rpc_error(None, FORBIDDEN, message, {"code": "forbidden", "field": header})
        return b"application/json", msgspec.json.encode(body)
    return json_refusal(path, message, header)


class GatewayGuard:
    """ASGI middleware: API-key and body checks for the protected paths, then the litestar app."""

    def __init__(self, app: Any, keys: ApiKeyStore) -> None:
        self._app = app
        self._keys = keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PROTECTED_PREFIXES) or path.startswith(PUBLIC_PATHS):
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization", "")
        scheme, _, secret = authorization.partition(" ")
        key = await self._keys.authenticate(secret.strip()) if scheme.lower() == "bearer" and secret else None
        if key is None:
            problem = key_problem(authorization)
            await _send_json(
                send, 401, key_refusal_body(path, problem), [(b"www-authenticate", key_challenge(problem))]
            )
            return
        scope[API_KEY_SCOPE_KEY] = key
        if path.rstrip("/") == MCP_PATH:
            version_problem = session_version_problem(headers)
            if version_problem is not None:
                await _send_json(send, 400, json_rpc_error(None, INVALID_REQUEST, version_problem), [])
                return
            if "mcp-session-id" not in headers:
                send = without_orphan_session_id(send)
        receive = await self._checked_body(scope, headers, receive, send)
        if receive is not None:
            await self._app(scope, receive, send)

    async def _checked_body(self, scope: dict[str, Any], headers: dict[str, str], receive: Any, send: Any) -> Any:
        """`receive` for the app once the body passed the checks of its door, or None when an error was sent."""
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/mcp":
            return await self._checked_json_rpc(scope, headers, receive, send)
        if scope["method"] in BODY_METHODS and scope["path"].startswith(API_PREFIX) and self._routed(scope):
            return await self._checked_rest_body(headers, receive, send)
        return receive

    def _routed(self, scope: dict[str, Any]) -> bool:
        """Whether a handler takes this method on this path: another is litestar's 404 or 405 (with `Allow`), not a
        complaint about a body that no handler reads."""
        try:
            self._app.asgi_router.handle_routing(path=scope["path"], method=scope["method"])
        except (NotFoundException, MethodNotAllowedException):
            return False
        return True

    async def _checked_rest_body(self, headers: dict[str, str], receive: Any, send: Any) -> Any:
        """REST bodies are JSON: say so for another Content-Type (415), and refuse JSON nested too deep to decode
        (400) here, where it is known to be the body's fault rather than a bug's."""
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            message = f"send the body as JSON with `Content-Type: application/json` (got `{media_type or 'none'}`)"
            await _send_json(send, 415, error_body("unsupported_media_type", message, "Content-Type"), [])
            return None
        buffered = await _buffered_body(receive, send)
        if buffered is None or buffered is receive:
            return buffered
        body, replay = buffered
        try:
            msgspec.json.decode(body)
        except RecursionError:
            await _send_json(send, 400, error_body("invalid_request", TOO_DEEP), [])
            return None
        except msgspec.DecodeError:
            pass  # litestar answers it, with the decoder's words
        return replay

    async def _checked_json_rpc(self, scope: dict[str, Any], headers: dict[str, str], receive: Any, send: Any) -> Any:
        """Answer -32600 (Invalid Request) for JSON that is not a JSON-RPC message, as JSON-RPC 2.0 says (the SDK
        answers -32602 there); otherwise hand the SDK the body as it came. Non-JSON is left to the SDK (-32700)."""
        buffered = await _buffered_body(receive, send)
        if buffered is None or buffered is receive:
            return buffered
        body, replay = buffered
        try:
            parsed = msgspec.json.decode(body)
        except msgspec.DecodeError:
            parsed = _NOT_JSON
        except RecursionError:
            error = {"code": -32700, "message": f"Parse error: {TOO_DEEP}"}
            await _send_json(send, 400, {"jsonrpc": "2.0", "id": None, "error": error}, [])
            return None
        if isinstance(parsed, dict) and isinstance(parsed.get("method"), str):
            scope[MCP_METHOD_SCOPE_KEY] = parsed["method"][:64]  # for the figures (HttpMeter); bounded
        if isinstance(parsed, list) and parsed:
            scope[MCP_METHOD_SCOPE_KEY] = "batch"
            await self._batch(scope, headers, parsed, send)
            return None
        if parsed is not _NOT_JSON and not _is_json_rpc_message(parsed):
            error = {"code": -32600, "message": 'Invalid Request: send a JSON-RPC 2.0 object with `jsonrpc`: "2.0"'}
            await _send_json(send, 400, {"jsonrpc": "2.0", "id": None, "error": error}, [])
            return None
        if parsed is not _NOT_JSON and (negotiated := negotiated_initialize(parsed)) is not parsed:
            return _replaying(scope, msgspec.json.encode(negotiated), receive)
        return replay

    async def _batch(self, scope: dict[str, Any], headers: dict[str, str], batch: list[Any], send: Any) -> None:
        if not batch_allowed(headers):
            await _send_json(send, 400, json_rpc_error(None, INVALID_REQUEST, batch_refusal(headers)), [])
            return
        status, answer = await answer_batch(self._app, scope, batch, _is_json_rpc_message)
        if answer is None:
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send_json(send, status, answer, [])


class HealthController(Controller):
    """Liveness and readiness probes (no key, no Host check: orchestrators call them by IP)."""

    include_in_schema = False

    @get("/healthz", sync_to_thread=False)
    def healthz(self, request: Request[Any, Any, Any]) -> dict[str, object]:
        """Liveness: the process serves HTTP."""
        runtime: ServiceRuntime = request.app.state.runtime
        return {"service": runtime.name, "version": runtime.version, "instance_id": runtime.instance_id}

    @get("/readyz", sync_to_thread=False)
    def readyz(self, request: Request[Any, Any, Any]) -> Response[dict[str, object]]:
        """Readiness: the gateway can reach the other services (NATS is connected)."""
        ready = request.app.state.runtime.nc.is_connected
        return Response({"ready": ready}, status_code=200 if ready else 503)


class ImagesController(Controller):
    """Stored outputs by id: the URL is the capability, so no key is asked."""

    path = "/images"
    include_in_schema = False

    @get("/{output_id:str}")
    async def image(self, request: Request[Any, Any, Any], output_id: str) -> Response[Any]:
        hub: HubClient = request.app.state.hub
        await require_connection(hub.nc)  # 503 + Retry-After at once while NATS is away
        reply = await output_reply(
            hub.outputs,
            output_id,
            if_none_match=request.headers.get("if-none-match"),
            range_header=request.headers.get("range"),
        )
        if reply.error is not None:
            raise reply.error  # the JSON error envelope, 404 or 503
        if isinstance(reply.body, bytes):
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)
        return Stream(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)


class MetricsController(Controller):
    """Prometheus figures of every replica of every service (no key; HUB_METRICS_ALLOW decides who)."""

    include_in_schema = False

    @get(METRICS_PATH)
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: ServiceRuntime = request.app.state.runtime
        allow: MetricsAllow = request.app.state.metrics_allow
        if not allow.allows(request.scope.get("client")):
            client = (request.scope.get("client") or ("unknown",))[0]
            raise HubError(
                ErrorCode.FORBIDDEN,
                f"{client} may not read /metrics; add its address or network to HUB_METRICS_ALLOW "
                f"(e.g. HUB_METRICS_ALLOW=127.0.0.1,{client})",
                field="HUB_METRICS_ALLOW",
            )
        await require_connection(runtime.nc)
        return Response(merge(await gather(runtime.nc)), media_type=METRICS_CONTENT_TYPE)


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="GenImage Hub API",
        version=__version__,
        # The document's own path, served at "/": litestar answers unknown paths under an OpenAPI path with
        # an HTML page, which would shadow the API's JSON 404 for every unknown /api/v1/... path.
        path=OPENAPI_PATH,
        render_plugins=[ContractJsonRenderPlugin(path="/")],
        components=Components(
            security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="hub API key")}
        ),
        security=[{"apiKey": []}],
    )


def create_http_app(runtime: ServiceRuntime, keys: ApiKeyStore, mcp_factory: Any, webhooks: Webhooks) -> Any:
    mcp_servers: list[HubMcp] = []

    @asgi("/mcp", is_mount=True, copy_scope=False)
    async def mcp_endpoint(scope: Any, receive: Any, send: Any) -> None:
        await mcp_servers[0].session_manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The HTTP server starts after NATS is connected (serve_http), so the hub client can be built here.
        hub = HubClient(
            runtime.nc,
            timeout_s=runtime.settings.request_timeout_s,
            check_callback=webhooks.check_callback,
            replicas=runtime.settings.jetstream_replicas,
        )
        mcp: HubMcp = mcp_factory(hub)
        mcp_servers.append(mcp)
        app.state.hub = hub
        async with mcp.session_manager.run():
            yield

    app = Litestar(
        route_handlers=[
            HealthController,
            MetricsController,
            ImagesController,
            mcp_endpoint,
            GenerationsController,
            CatalogController,
        ],
        state=State({"runtime": runtime, "metrics_allow": MetricsAllow(runtime.settings.metrics_allow)}),
        openapi_config=openapi_config(),
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=before_api_request,
        logging_config=None,
        request_max_body_size=MAX_REQUEST_BODY_BYTES,  # the guard's limit, the same as /mcp's
        lifespan=[lifespan],
    )
    guarded = GatewayGuard(app, keys)
    checked = HostGuard(guarded, policy_of(runtime.settings, "gateway"), refusal=host_refusal, log=runtime.log)
    return HttpMeter(checked, runtime.metrics)
