"""The MCP server (official `mcp` SDK, low-level API): tools and resources over the hub's NATS services.

The tools translate calls into requests to dispatch, registry and prompt; nothing is decided here. The
Streamable HTTP transport (`StreamableHTTPSessionManager`) serves both protocol eras the SDK knows.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import msgspec
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from contracts.errors import ErrorCode, HubError, error_from_validation
from contracts.messages.events import JobCancelled, JobCompleted, JobFailed, JobProgress
from contracts.messages.jobs import GenerationRequest, JobView
from contracts.messages.keys import ApiKey
from contracts.messages.render_types import RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, StyleList
from gateway import __version__
from gateway.hub_client import HubClient
from gateway.results import Generation, JobRef, NoArguments, StylesQuery, generation_of
from gateway.schemas import object_schema
from gateway.thumbnails import webp_thumbnail

# Set on the ASGI scope by the gateway's auth layer; the tools read the caller's key from it.
API_KEY_SCOPE_KEY = "hub.api_key"
IMAGE_URI_PREFIX = "hub://images/"
MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024  # an input image sent as base64 must fit
CALLER_FIELDS = ("api_key_id", "client_name")  # filled by the gateway, never by the caller

INSTRUCTIONS = (
    "GenImage Hub makes images with ComfyUI. Call list_render_types and list_styles to see the choices, "
    "preview_prompt to see the final prompt, then generate_image. A long job returns done=false with a job_id: "
    "follow it with get_generation. Images are links (resource_link) with a small inline preview."
)


@dataclass(frozen=True)
class McpSettings:
    tool_budget_s: float = 50.0  # the longest a generate_image call is held before it returns the job id
    thumbnail_max_bytes: int = 48 * 1024


INT_INPUT_ERROR = -32602


class _Tool(msgspec.Struct, frozen=True):
    name: str
    description: str
    input_type: type
    output_type: type | None
    drop: tuple[str, ...] = ()


TOOLS: tuple[_Tool, ...] = (
    _Tool(
        "generate_image",
        "Generate images from a text prompt (and optionally an input image for img2img/upscale render types). "
        "Waits for the result up to a time budget; returns links to the full images, a small inline preview and "
        "the job's details (final prompts, seed, render type, instance, timings). If `done` is false, call "
        "get_generation with the job_id later. Unknown styles or render types fail with the valid names.",
        GenerationRequest,
        Generation,
        CALLER_FIELDS,
    ),
    _Tool(
        "get_generation",
        "Status and result of a generation by job_id (same shape as generate_image's result); returns at once.",
        JobRef,
        Generation,
    ),
    _Tool("cancel_generation", "Cancel a queued or running generation by job_id.", JobRef, Generation),
    _Tool(
        "list_render_types",
        "The render types (kinds of generation, e.g. sdxl, flux, img2img, upscale) with their parameters and "
        "defaults; the default one is used when generate_image gets no render_type.",
        NoArguments,
        RenderTypeList,
    ),
    _Tool(
        "list_styles",
        "The prompt styles that can be passed in generate_image's `styles` (the default ones are applied when "
        "`styles` is omitted).",
        StylesQuery,
        StyleList,
    ),
    _Tool(
        "preview_prompt",
        "Show the final positive and negative prompt that generate_image would send for this prompt, styles "
        "and render type (with the LLM rewrite when enhance is true), without generating anything.",
        BuildPrompt,
        BuiltPrompt,
        ("enhance_timeout_s",),
    ),
)


def _tool_definitions() -> list[types.Tool]:
    return [
        types.Tool(
            name=tool.name,
            description=tool.description,
            input_schema=object_schema(tool.input_type, drop=tool.drop),
            output_schema=object_schema(tool.output_type) if tool.output_type else None,
        )
        for tool in TOOLS
    ]


def _error_result(error: HubError) -> types.CallToolResult:
    info = error.info
    text = info.message
    if info.details:
        text += "\n" + json.dumps(info.details, default=str)
    structured = msgspec.to_builtins({"error": info})
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured, is_error=True)


def _base_url(ctx: ServerRequestContext[Any]) -> str:
    request = ctx.request
    if request is None:
        return ""
    headers = request.headers
    host = headers.get("host") or "127.0.0.1"
    return f"{request.url.scheme}://{host}"


def _api_key(ctx: ServerRequestContext[Any]) -> ApiKey | None:
    request = ctx.request
    return request.scope.get(API_KEY_SCOPE_KEY) if request is not None else None


class HubMcp:
    def __init__(self, hub: HubClient, settings: McpSettings, log: Any) -> None:
        self._hub = hub
        self._settings = settings
        self._log = log
        self._tools = {tool.name: tool for tool in TOOLS}
        self._definitions = _tool_definitions()
        self.server: Server[Any] = Server(
            "genimage-hub",
            version=__version__,
            title="GenImage Hub",
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
        )
        self.session_manager = StreamableHTTPSessionManager(
            # Origin and Host are checked by the gateway's own layer in front (GatewayGuard), with its rules.
            app=self.server,
            security_settings=None,
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
        )

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._definitions)

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        tool = self._tools.get(params.name)
        if tool is None:
            raise MCPError(INT_INPUT_ERROR, f"unknown tool `{params.name}`; tools: {', '.join(self._tools)}")
        arguments = dict(params.arguments or {})
        try:
            for name in tool.drop:
                if name in arguments:
                    raise HubError(ErrorCode.INVALID_REQUEST, f"`{name}` is set by the hub, leave it out", field=name)
            message = msgspec.convert(arguments, tool.input_type)
            handler: Callable[[ServerRequestContext[Any], Any], Awaitable[types.CallToolResult]] = getattr(
                self, f"_tool_{tool.name}"
            )
            return await handler(ctx, message)
        except msgspec.ValidationError as exc:
            return _error_result(HubError.from_info(error_from_validation(exc, params.name, tool.input_type)))
        except HubError as exc:
            return _error_result(exc)

    @staticmethod
    def _structured(value: msgspec.Struct, text: str | None = None) -> types.CallToolResult:
        data = msgspec.to_builtins(value)
        return types.CallToolResult(content=[types.TextContent(text=text or json.dumps(data))], structured_content=data)

    async def _tool_list_render_types(self, ctx: ServerRequestContext[Any], _: Any) -> types.CallToolResult:
        return self._structured(await self._hub.render_types())

    async def _tool_list_styles(self, ctx: ServerRequestContext[Any], query: StylesQuery) -> types.CallToolResult:
        return self._structured(await self._hub.styles(query.render_type))

    async def _tool_preview_prompt(self, ctx: ServerRequestContext[Any], build: BuildPrompt) -> types.CallToolResult:
        return self._structured(await self._hub.preview(build))

    async def _tool_get_generation(self, ctx: ServerRequestContext[Any], ref: JobRef) -> types.CallToolResult:
        view = await self._hub.job(ref.job_id)
        return await self._generation_result(ctx, view)

    async def _tool_cancel_generation(self, ctx: ServerRequestContext[Any], ref: JobRef) -> types.CallToolResult:
        view = await self._hub.cancel(ref.job_id, "cancelled by the MCP caller")
        return await self._generation_result(ctx, view, thumbnails=False)

    async def _tool_generate_image(
        self, ctx: ServerRequestContext[Any], generation: GenerationRequest
    ) -> types.CallToolResult:
        key = _api_key(ctx)
        generation = msgspec.structs.replace(
            generation, api_key_id=key.key_id if key else None, client_name=f"mcp:{key.name}" if key else "mcp"
        )
        submitted = await self._hub.submit(generation)
        job_id = submitted.job_id
        try:
            if submitted.status not in ("completed", "failed", "cancelled"):
                await self._follow(ctx, job_id)
            view = await self._hub.job(job_id)
        except anyio.get_cancelled_exc_class():
            # The caller cancelled the request (notifications/cancelled, or closed the 2026-era response
            # stream): cancel the job too, so no GPU time is spent on an image nobody waits for.
            with anyio.CancelScope(shield=True):
                try:
                    await self._hub.cancel(job_id, "the MCP request was cancelled")
                except HubError as exc:
                    self._log.info("could not cancel the job of a cancelled request", job_id=job_id, error=str(exc))
            raise
        return await self._generation_result(ctx, view)

    async def _follow(self, ctx: ServerRequestContext[Any], job_id: str) -> None:
        """Relay progress until the job ends or the budget is spent (the caller then polls get_generation)."""
        sent = 0.0

        async def follow() -> None:
            nonlocal sent
            async for event in self._hub.events(job_id):
                if isinstance(event, JobProgress) and event.max > 0:
                    percent = min(100.0, 100.0 * event.value / event.max)
                    if percent > sent:  # progress must only grow, also across a retry on another instance
                        sent = percent
                        await ctx.session.report_progress(percent, 100.0, f"step {event.value}/{event.max}")
                elif isinstance(event, (JobCompleted, JobFailed, JobCancelled)):
                    return

        with anyio.move_on_after(self._settings.tool_budget_s):
            await follow()

    async def _generation_result(
        self, ctx: ServerRequestContext[Any], view: JobView, *, thumbnails: bool = True
    ) -> types.CallToolResult:
        result = generation_of(view, _base_url(ctx))
        summary = f"job {result.job_id}: {result.status}"
        if not result.done:
            summary += " (not finished: call get_generation with this job_id to follow it)"
        if result.error:
            summary += f"; error: {result.error}"
        content: list[Any] = [types.TextContent(text=summary)]
        for image in result.images:
            content.append(
                types.ResourceLink(
                    name=image.filename,
                    uri=image.url,
                    mime_type=image.content_type,
                    size=image.size,
                    description=f"generated image of job {result.job_id}",
                )
            )
        if thumbnails and result.images:
            budget = self._settings.thumbnail_max_bytes // len(result.images)
            for image in result.images:
                if not image.content_type.startswith("image/"):
                    continue
                data = await self._hub.outputs.read_all(image.output_id)
                thumb = await asyncio.to_thread(webp_thumbnail, data, max_bytes=budget)
                if thumb is not None:
                    content.append(types.ImageContent(data=base64.b64encode(thumb).decode(), mime_type="image/webp"))
        return types.CallToolResult(
            content=content, structured_content=msgspec.to_builtins(result), is_error=view.status == "failed"
        )

    async def _list_resources(self, ctx: ServerRequestContext[Any], params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    name="render-types",
                    uri="hub://render-types",
                    mime_type="application/json",
                    description="The enabled render types with their parameters and defaults",
                ),
                types.Resource(
                    name="styles",
                    uri="hub://styles",
                    mime_type="application/json",
                    description="The enabled prompt styles",
                ),
            ]
        )

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: Any
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name="image",
                    uri_template=IMAGE_URI_PREFIX + "{output_id}",
                    description="A generated image by its output id (also its URL /images/<output_id>)",
                )
            ]
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            if uri == "hub://render-types":
                text = msgspec.json.encode(await self._hub.render_types()).decode()
                return types.ReadResourceResult(
                    contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
                )
            if uri == "hub://styles":
                text = msgspec.json.encode(await self._hub.styles()).decode()
                return types.ReadResourceResult(
                    contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
                )
            output_id = None
            if uri.startswith(IMAGE_URI_PREFIX):
                output_id = uri.removeprefix(IMAGE_URI_PREFIX)
            elif uri.startswith(("http://", "https://")) and "/images/" in uri:
                output_id = uri.rsplit("/images/", 1)[1]
            if output_id:
                info = await self._hub.outputs.info(output_id)
                if info is not None:
                    data = await self._hub.outputs.read_all(output_id)
                    return types.ReadResourceResult(
                        contents=[
                            types.BlobResourceContents(
                                uri=uri, mime_type=info.content_type, blob=base64.b64encode(data).decode()
                            )
                        ]
                    )
        except HubError as exc:
            raise MCPError(-32603, exc.info.message) from None
        raise MCPError(-32002, f"resource not found: {uri}", {"uri": uri})
