"""REST API under /api/v1 (litestar): the same calls as the MCP tools, for plain HTTP clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from contracts.errors import ErrorCode, HubError
from contracts.messages.base import Request as HubRequest
from contracts.messages.events import JobCancelled, JobCompleted, JobFailed
from contracts.messages.jobs import CANCELLED_BY_CALLER, GenerationRequest, SubmitReply
from contracts.messages.keys import ApiKey
from contracts.messages.render_types import RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, StyleList
from gateway.hub_client import HubClient
from gateway.idempotency import HEADER, KEPT_S
from gateway.job_access import cancel_own_job, check_readable, readable_job
from gateway.key_limits import with_key_limits
from gateway.mcp_server import API_KEY_SCOPE_KEY, CALLER_FIELDS
from gateway.results import Generation, generation_of
from gateway.webhooks import deliveries_of

API_PREFIX = "/api/v1"

STATUS_OF_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INCOMPATIBLE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.CANCELLED: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 503,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
}


def _caller_request_type() -> type:
    """GenerationRequest without the fields the gateway fills (api_key_id, client_name, job_id)."""
    fields: list[Any] = []
    for info in msgspec.structs.fields(GenerationRequest):
        if info.name in CALLER_FIELDS:
            continue
        if info.required:
            fields.append((info.name, info.type))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, info.type, msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((info.name, info.type, info.default))
    return msgspec.defstruct(
        "NewGeneration", fields, bases=(HubRequest,), kw_only=True, forbid_unknown_fields=True, module=__name__
    )


NewGeneration = _caller_request_type()


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong (`code`, for programs; `message`, for people, with the fix) and the field at fault."""

    code: str
    message: str
    field: str | None = None
    details: dict[str, Any] | None = None  # valid choices or limits a caller can act on


class ErrorBody(msgspec.Struct, kw_only=True):
    """The body of every error answer of the API."""

    error: ErrorDetail


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: `error.field` names the field at fault, `error.message` the fix",
    401: "No API key was sent, or it is unknown or revoked (`WWW-Authenticate` says which)",
    403: "The `Host` or `Origin` is not allowed (DNS-rebinding defence); `error.field` names the header",
    404: "No such generation, render type, style or stored image (`error.field` names it)",
    409: "The request conflicts with the generation's state, or its `Idempotency-Key` was used for another request",
    413: "The request body is larger than the gateway accepts",
    415: "The body was not sent as `Content-Type: application/json`",
    429: "A limit of the caller's key is reached (`error.details.limit` names it); retry after `Retry-After` s",
    503: "A hub service cannot be reached or did not answer in time; retry later",
}
GUARD_STATUSES = (401, 403, 503)  # every operation: the key, Host and Origin checks, and a hub that is away


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The error answers of one operation, besides those every operation has (GUARD_STATUSES)."""
    return {
        status: ResponseSpec(ErrorBody, description=ERROR_DESCRIPTIONS[status], generate_examples=False)
        for status in sorted({*GUARD_STATUSES, *statuses})
    }


def error_body(code: str, message: str, field: str | None = None, details: Any = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(code=code, message=message, field=field, details=details))


def hub_error_response(_: Request[Any, Any, Any], exc: HubError) -> Response[Any]:
    info = exc.info
    retry_after = (info.details or {}).get("retry_after_s")  # e.g. the hub is reconnecting to NATS
    return Response(
        error_body(info.code.value, info.message, info.field, info.details),
        status_code=STATUS_OF_CODE.get(info.code, 500),
        headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
    )


def validation_error_response(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    field = first.get("key") or None
    message = first.get("message") or exc.detail
    return Response(
        error_body("invalid_request", f"invalid value for `{field}`: {message}" if field else str(message), field),
        status_code=400,
    )


def http_error_response(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "error")
    # The exception's headers carry what RFC 9110 asks for, e.g. `Allow` on a 405.
    return Response(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HubError: hub_error_response,
    ValidationException: validation_error_response,
    HTTPException: http_error_response,
}


_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")


def _strict_body_problem(request: Request[Any, Any, Any], body: bytes) -> ValidationException | None:
    """The body's first disagreement with the handler's `data` type, decoded strictly, or None."""
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None or not body:
        return None
    try:
        msgspec.json.decode(body, type=data.annotation)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = _AT_PATH.search(text)
        unknown = _UNKNOWN_FIELD.search(text)
        prefix = at.group("path") if at else ""
        field = f"{prefix}.{unknown.group('name')}".lstrip(".") if unknown else prefix
        message = text[: at.start()] if at else text
        return ValidationException(detail=message, extra=[{"key": field or None, "message": message}])
    except msgspec.DecodeError:
        return None  # not JSON: litestar answers it, with the decoder's words
    return None


def _allowed_methods(request: Request[Any, Any, Any]) -> Response[None]:
    """litestar's own OPTIONS answer lists the methods of the first handler registered on a path only (DELETE, not
    GET, on /generations/{job_id}); answer with those of the whole route."""
    template = request.scope["path_template"]
    routes = (route.methods for route in request.app.routes if route.path_format == template)
    methods = next(routes, request.route_handler.http_methods)
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


async def before_api_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    """OPTIONS answered with the route's methods, and a body decoded strictly: litestar converts a body leniently
    (`"512"` passes as 512, `"true"` as true), which the OpenAPI document refuses; so the API takes what the
    document describes and nothing else."""
    if request.method == "OPTIONS":
        return _allowed_methods(request)
    if request.method in ("POST", "PUT", "PATCH"):
        problem = _strict_body_problem(request, await request.body())
        if problem is not None:
            raise problem
    return None


def _base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


def _key(request: Request[Any, Any, Any]) -> ApiKey | None:
    key = request.scope.get(API_KEY_SCOPE_KEY)
    return key if isinstance(key, ApiKey) else None  # set by the key middleware for every protected path


class GenerationsController(Controller):
    path = f"{API_PREFIX}/generations"
    tags = ["generations"]

    @post("/", status_code=202, responses=error_responses(400, 404, 409, 413, 415, 429))
    async def submit(
        self,
        request: Request[Any, Any, Any],
        # NewGeneration is the request schema built at import time (a variable, for the OpenAPI document).
        data: NewGeneration,  # type: ignore[valid-type]
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header=HEADER,
                required=False,
                # Checked by the hub (check_key), so a bad key is refused naming the header, not this parameter.
                schema_extra={"format": "uuid"},
                description="Optional: a UUID of your choosing, new for each request. A retry with the same key "
                "(after a lost answer) gets the job made first (202, same job_id) instead of a second job; kept "
                f"{KEPT_S // 3600} h per API key. The same key with a different body is refused (409).",
            ),
        ] = None,
    ) -> Response[SubmitReply]:
        """Submit a generation; follow it at the `Location` (GET) or its `/events` (server-sent events)."""
        hub: HubClient = request.app.state.hub
        key = _key(request)
        generation = msgspec.convert(
            {**msgspec.structs.asdict(data), "api_key_id": key.key_id if key else None, "client_name": "rest"},
            GenerationRequest,
        )
        reply = await hub.submit(with_key_limits(generation, key), idempotency_key, HEADER)
        return Response(reply, status_code=202, headers={"Location": f"{self.path}/{reply.job_id}"})

    @get("/{job_id:str}", responses=error_responses(400, 404))
    async def get_generation(self, request: Request[Any, Any, Any], job_id: str) -> Generation:
        """Status and result of a generation (image URLs under /images/); only the API key that made it sees it."""
        hub: HubClient = request.app.state.hub
        generation = generation_of(await readable_job(hub, _key(request), job_id), _base_url(request))
        return msgspec.structs.replace(generation, webhooks=await deliveries_of(job_id))

    @delete("/{job_id:str}", status_code=200, responses=error_responses(400, 404, 409))
    async def cancel_generation(self, request: Request[Any, Any, Any], job_id: str) -> Generation:
        """Cancel a queued or running generation made with this API key (a finished one is returned as it is); it
        stays readable, with its status `cancelled`."""
        hub: HubClient = request.app.state.hub
        view = await cancel_own_job(hub, _key(request), job_id, CANCELLED_BY_CALLER)
        return generation_of(view, _base_url(request))

    @get(
        "/{job_id:str}/events",
        media_type="text/event-stream",
        response_description="Server-sent events: `event` is the kind, `data` the event as JSON, `id` its id",
        responses=error_responses(400, 404),
    )
    async def events(self, request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
        """The job's events from the first, as server-sent events (`event` = kind), until the final one."""
        hub: HubClient = request.app.state.hub
        await check_readable(hub, _key(request), job_id)  # 404 for an unknown or another key's job, before streaming

        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            async for event in hub.events(job_id):
                kind = type(event).__struct_config__.tag
                yield ServerSentEventMessage(
                    data=msgspec.json.encode(event).decode(), event=str(kind), id=event.event_id
                )
                if isinstance(event, (JobCompleted, JobFailed, JobCancelled)):
                    return

        return ServerSentEvent(stream())


class CatalogController(Controller):
    path = API_PREFIX
    tags = ["catalog"]

    @get("/render-types", responses=error_responses())
    async def render_types(self, request: Request[Any, Any, Any]) -> RenderTypeList:
        """The enabled render types with their parameters and defaults."""
        return await request.app.state.hub.render_types()

    @get("/styles", responses=error_responses(400, 404))
    async def styles(self, request: Request[Any, Any, Any], render_type: str | None = None) -> StyleList:
        """The enabled styles (only those suited to `render_type` when given)."""
        return await request.app.state.hub.styles(render_type)

    @post("/prompt-preview", status_code=200, responses=error_responses(400, 404, 413, 415))
    async def prompt_preview(self, request: Request[Any, Any, Any], data: BuildPrompt) -> BuiltPrompt:
        """The final positive and negative prompt for a prompt, styles and render type, without generating."""
        return await request.app.state.hub.preview(data)
