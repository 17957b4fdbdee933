"""REST API under /api/v1 (litestar): the same calls as the MCP tools, for plain HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from contracts.errors import ErrorCode, HubError
from contracts.messages.base import Request as HubRequest
from contracts.messages.events import JobCancelled, JobCompleted, JobFailed
from contracts.messages.jobs import CANCELLED_BY_CALLER, GenerationRequest, SubmitReply
from contracts.messages.keys import ApiKey
from contracts.messages.render_types import RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, StyleList
from gateway.hub_client import HubClient
from gateway.job_access import cancel_own_job, readable_job
from gateway.mcp_server import API_KEY_SCOPE_KEY, CALLER_FIELDS
from gateway.results import Generation, generation_of

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
    ErrorCode.INTERNAL: 500,
}


def _caller_request_type() -> type:
    """GenerationRequest without the fields the gateway fills (api_key_id, client_name)."""
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


def error_body(code: str, message: str, field: str | None = None, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, "details": details}}


def hub_error_response(_: Request[Any, Any, Any], exc: HubError) -> Response[Any]:
    info = exc.info
    return Response(
        error_body(info.code.value, info.message, info.field, info.details),
        status_code=STATUS_OF_CODE.get(info.code, 500),
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
    return Response(error_body(code, str(exc.detail)), status_code=exc.status_code)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HubError: hub_error_response,
    ValidationException: validation_error_response,
    HTTPException: http_error_response,
}


def _base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


def _key(request: Request[Any, Any, Any]) -> ApiKey | None:
    return request.scope.get(API_KEY_SCOPE_KEY)  # type: ignore[call-overload,no-any-return]


class GenerationsController(Controller):
    path = f"{API_PREFIX}/generations"
    tags = ["generations"]

    @post("/", status_code=202)
    async def submit(self, request: Request[Any, Any, Any], data: NewGeneration) -> Response[SubmitReply]:  # type: ignore[valid-type]
        """Submit a generation; follow it at the `Location` (GET) or its `/events` (server-sent events)."""
        hub: HubClient = request.app.state.hub
        key = _key(request)
        generation = msgspec.convert(
            {**msgspec.structs.asdict(data), "api_key_id": key.key_id if key else None, "client_name": "rest"},
            GenerationRequest,
        )
        reply = await hub.submit(generation)
        return Response(reply, status_code=202, headers={"Location": f"{self.path}/{reply.job_id}"})

    @get("/{job_id:str}")
    async def get_generation(self, request: Request[Any, Any, Any], job_id: str) -> Generation:
        """Status and result of a generation (image URLs under /images/); only the API key that made it sees it."""
        hub: HubClient = request.app.state.hub
        return generation_of(await readable_job(hub, _key(request), job_id), _base_url(request))

    @delete("/{job_id:str}", status_code=200)
    async def cancel_generation(self, request: Request[Any, Any, Any], job_id: str) -> Generation:
        """Cancel a queued or running generation made with this API key (a finished one is returned as it is)."""
        hub: HubClient = request.app.state.hub
        view = await cancel_own_job(hub, _key(request), job_id, CANCELLED_BY_CALLER)
        return generation_of(view, _base_url(request))

    @get("/{job_id:str}/events")
    async def events(self, request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
        """The job's events from the first, as server-sent events (`event` = kind), until the final one."""
        hub: HubClient = request.app.state.hub
        await readable_job(hub, _key(request), job_id)  # 404 for an unknown or another key's job, before streaming

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

    @get("/render-types")
    async def render_types(self, request: Request[Any, Any, Any]) -> RenderTypeList:
        """The enabled render types with their parameters and defaults."""
        return await request.app.state.hub.render_types()

    @get("/styles")
    async def styles(self, request: Request[Any, Any, Any], render_type: str | None = None) -> StyleList:
        """The enabled styles (only those suited to `render_type` when given)."""
        return await request.app.state.hub.styles(render_type)

    @post("/prompt-preview", status_code=200)
    async def prompt_preview(self, request: Request[Any, Any, Any], data: BuildPrompt) -> BuiltPrompt:
        """The final positive and negative prompt for a prompt, styles and render type, without generating."""
        return await request.app.state.hub.preview(data)
