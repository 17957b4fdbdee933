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
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import mcp_types as types
import msgspec
from mcp.server import Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from nats.errors import Error as NatsError

from contracts.errors import ErrorCode, HubError, error_from_validation
from contracts.messages.base import struct_from
from contracts.messages.events import JobCancelled, JobCompleted, JobFailed, JobProgress
from contracts.messages.jobs import CANCELLED_BY_CALLER, GenerationRequest, JobView, SubmitReply
from contracts.messages.keys import ApiKey
from contracts.messages.render_types import RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, StyleList
from gateway import __version__
from gateway.followed_job import FollowedJob
from gateway.hub_client import HubClient
from gateway.idempotency import UUID_PATTERN
from gateway.job_access import cancel_own_job, cancellable_job, readable_job
from gateway.key_limits import with_key_limits
from gateway.mcp_listen import ListenHandler
from gateway.mcp_tasks import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    RELATED_TASK_META,
    TASKS_EXTENSION,
    TASKS_VERSION,
    TERMINAL,
    TaskRef,
    TaskUpdate,
    declares_tasks_extension,
    legacy_capabilities,
    legacy_task,
    missing_capability_data,
    modern_task,
    progress_message,
    status_message,
)
from gateway.results import Generation, JobRef, NoArguments, StylesQuery, generation_of
from gateway.schemas import object_schema
from gateway.thumbnails import Preview, preview

# Set on the ASGI scope by the gateway's auth layer; the tools read the caller's key from it.
API_KEY_SCOPE_KEY = "hub.api_key"
IMAGE_URI_PREFIX = "hub://images/"
MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024  # an input image sent as base64 must fit
CALLER_FIELDS = (
    "api_key_id",
    "client_name",
    "max_waiting",
    "max_running",
    "weight",
    "job_id",
    "inline_previews",
    "key_webhooks",
)  # filled by the gateway, never by the caller

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
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020  # the code the SDK answers for a standard request whose Mcp-* headers disagree
PROGRESS_NUDGE = 0.001  # percent: how much a repeated progress notification is raised to stay increasing
TASK_TOOLS = frozenset({"generate_image"})  # the tools that may run as a task
TASKS_PAGE_SIZE = 50  # tasks per tasks/list page
# A held generate_image asks the dispatcher for its job's view twice (its place at the start, its state when it
# answers): it waits this long for each, with at most this many asked at a time over all calls (_view_within).
VIEW_WAIT_S = 3.0
VIEW_REQUESTS_AT_ONCE = 32
THUMBNAILS_KEPT = 64  # latest previews kept (at most 48 KiB each by default): see HubMcp._thumbnail


class _Tool(msgspec.Struct, frozen=True):
    name: str
    description: str
    input_type: type
    output_type: type | None
    drop: tuple[str, ...] = ()
    runs_as_task: bool = False


class GenerateImage(GenerationRequest, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """generate_image's arguments: a GenerationRequest and the caller's idempotency key."""

    idempotency_key: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=UUID_PATTERN.pattern,
                description="Optional: a UUID of your choosing, new for each request. Calling again with the same "
                "key (a retry after a lost answer) returns the job made first instead of a second one; kept 24 h per "
                "API key. The same key with different arguments is refused.",
            ),
        ]
        | None
    ) = None


TOOLS: tuple[_Tool, ...] = (
    _Tool(
        "generate_image",
        "Generate images from a text prompt (and optionally an input image for img2img/upscale render types). "
        "`prompt` is required by render types that take one; render types without a prompt slot (e.g. upscale, "
        "image filters: list_render_types shows no `prompt` parameter) take none, so omit it there. "
        "Waits for the result up to a time budget; returns links to the full images, a small inline preview and "
        "the job's details (final prompts, seed, render type, instance, timings). If `done` is false, call "
        "get_generation with the job_id later. Unknown styles or render types fail with the valid names.",
        GenerateImage,
        Generation,
        CALLER_FIELDS,
        runs_as_task=True,
    ),
    _Tool(
        "get_generation",
        "Status and result of a generation by job_id (same shape as generate_image's result); returns at once. "
        "Only generations made with this API key are found.",
        JobRef,
        Generation,
    ),
    _Tool(
        "cancel_generation",
        "Cancel a queued or running generation made with this API key, by job_id.",
        JobRef,
        Generation,
    ),
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
            execution=types.ToolExecution(task_support="optional") if tool.runs_as_task else None,
        )
        for tool in TOOLS
    ]


class _HubServer(Server[Any]):
    """The SDK's low-level server, plus the 2025-11-25 `tasks` capability that the SDK does not derive."""

    def get_capabilities(self, *args: Any, protocol_version: str | None = None, **kwargs: Any) -> Any:
        capabilities = super().get_capabilities(*args, protocol_version=protocol_version, **kwargs)
        if protocol_version not in MODERN_PROTOCOL_VERSIONS:
            capabilities.tasks = legacy_capabilities()
        else:
            # What subscriptions/listen really delivers here (gateway.mcp_listen): resource updates, no list changes.
            capabilities.tools = types.ToolsCapability(list_changed=False)
            capabilities.resources = types.ResourcesCapability(subscribe=True, list_changed=False)
        return capabilities


def _error_result(error: HubError) -> types.CallToolResult:
    info = error.info
    text = info.message
    if info.details:
        text += "\n" + json.dumps(info.details, default=str)
    structured = msgspec.to_builtins({"error": info})
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured, is_error=True)


def result_summary(result: Generation) -> str:
    """The text line of a generation's tool result: status, error, and images retention removed (with when)."""
    summary = f"job {result.job_id}: {result.status}"
    if not result.done:
        summary += " (not finished: call get_generation with this job_id to follow it)"
    if result.error:
        summary += f"; error: {result.error}"
    removed = [image.removed_at for image in result.images if image.removed_at is not None]
    if removed:
        when = datetime.fromtimestamp(max(removed), UTC).isoformat(timespec="seconds")
        summary += f"; {len(removed)} of {len(result.images)} image(s) removed by retention (last at {when})"
    return summary


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
        self._input_schemas = {tool.name: tool.input_schema for tool in self._definitions}
        self._view_slots = anyio.Semaphore(VIEW_REQUESTS_AT_ONCE)
        self._thumbnails: dict[tuple[str, int], Preview | None] = {}  # (output id, size budget) -> preview
        self.server: Server[Any] = _HubServer(
            "genimage-hub",
            version=__version__,
            title="GenImage Hub",
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            # A 2026-07-28 tools/call with arguments has its Mcp-Param-* headers checked against the tool's input
            # schema: without this lookup the SDK runs a whole tools/list (the pipeline, ~25 KB dumped and
            # validated) for each such call to find that schema. The tools are the same for every caller.
            get_tool_input_schema=self._input_schemas.get,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            # The handler returns its result as a plain dict (`{"_meta": ...}`), which the SDK sends unchanged.
            on_subscriptions_listen=ListenHandler(hub.nc, self._listened_task, hub.events),  # type: ignore[arg-type]
        )
        self.server.extensions[TASKS_EXTENSION] = {}
        self.server.middleware.append(self._legacy_task_call)
        self.server.middleware.append(self._kept_tool_listing)
        self._tool_listings: dict[str, dict[str, Any]] = {}  # protocol version -> tools/list's answer (wire form)
        self.server.add_request_handler("tasks/get", TaskRef, self._tasks_get)
        self.server.add_request_handler("tasks/result", TaskRef, self._tasks_result)
        self.server.add_request_handler("tasks/cancel", TaskRef, self._tasks_cancel)
        self.server.add_request_handler("tasks/list", types.PaginatedRequestParams, self._tasks_list)
        self.server.add_request_handler("tasks/update", TaskUpdate, self._tasks_update)
        self.session_manager = StreamableHTTPSessionManager(
            # Origin and Host are checked by the gateway's own layer in front (GatewayGuard), with its rules.
            app=self.server,
            security_settings=None,
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
        )

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._definitions)

    async def _kept_tool_listing(self, ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
        """tools/list's answer, made by the SDK once per protocol version and given again after.

        The listing is the same for every call (all tools, no pages), but the SDK dumps, validates against the
        version's schema and dumps again its ~25 KB at each call: about half of the CPU of a tools/list (8-9 ms
        in all), which every client pays at each connection. A middleware's answer goes out as it is (the SDK
        copies the dict), so the kept one is exactly what the SDK made for that version.
        """
        if ctx.method != "tools/list":
            return await call_next(ctx)
        kept = self._tool_listings.get(ctx.protocol_version)
        if kept is not None:
            return kept
        listing = await call_next(ctx)
        if isinstance(listing, dict):
            self._tool_listings[ctx.protocol_version] = listing
        return listing

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        tool = self._tools.get(params.name)
        if tool is None:
            raise MCPError(INT_INPUT_ERROR, f"unknown tool `{params.name}`; tools: {', '.join(self._tools)}")
        try:
            message = self._arguments(tool, params.arguments)
            handler: Callable[[ServerRequestContext[Any], Any], Awaitable[Any]] = getattr(self, f"_tool_{tool.name}")
            return await handler(ctx, message)
        except msgspec.ValidationError as exc:
            return _error_result(HubError.from_info(error_from_validation(exc, params.name, tool.input_type)))
        except HubError as exc:
            return _error_result(exc)

    @staticmethod
    def _arguments(tool: _Tool, arguments: dict[str, Any] | None) -> Any:
        """A tool call's arguments as the tool's contract type (raises msgspec.ValidationError or HubError)."""
        arguments = dict(arguments or {})
        for name in tool.drop:
            if name in arguments:
                raise HubError(ErrorCode.INVALID_REQUEST, f"`{name}` is set by the hub, leave it out", field=name)
        return msgspec.convert(arguments, tool.input_type)

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
        view = await readable_job(self._hub, _api_key(ctx), ref.job_id)
        return await self._generation_result(ctx, view)

    async def _tool_cancel_generation(self, ctx: ServerRequestContext[Any], ref: JobRef) -> types.CallToolResult:
        view = await cancel_own_job(self._hub, _api_key(ctx), ref.job_id, CANCELLED_BY_CALLER)
        return await self._generation_result(ctx, view, thumbnails=False)

    async def _submit(self, ctx: ServerRequestContext[Any], arguments: GenerateImage) -> SubmitReply:
        key = _api_key(ctx)
        generation = struct_from(
            GenerationRequest,
            arguments,
            api_key_id=key.key_id if key else None,
            client_name=f"mcp:{key.name}" if key else "mcp",
            inline_previews=True,  # the result shows each image inline: ComfyUI makes the JPEG it starts from
        )
        generation = with_key_limits(generation, key)
        return await self._hub.submit(generation, arguments.idempotency_key, "idempotency_key")

    async def _tool_generate_image(
        self, ctx: ServerRequestContext[Any], generation: GenerateImage
    ) -> types.CallToolResult | dict[str, Any]:
        reply = await self._submit(ctx, generation)
        job_id = reply.job_id
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and declares_tasks_extension(ctx.params):
            # The client takes tasks: answer at once with the task; it polls tasks/get (the job is stored, so
            # tasks/get resolves on any gateway replica from now on).
            return {"resultType": "task", **modern_task(await self._hub.job(job_id))}
        followed = FollowedJob(job_id, generation.prompt or "", reply)
        try:
            await self._follow(ctx, followed)
            # A completed job's events hold its result (see FollowedJob): no view to ask the dispatcher for.
            view = followed.view if followed.completed else await self._view_within(job_id) or followed.view
        except anyio.get_cancelled_exc_class():
            # The caller cancelled the request (notifications/cancelled, or closed the 2026-era response
            # stream): cancel the job too, so no GPU time is spent on an image nobody waits for.
            with anyio.CancelScope(shield=True):
                try:
                    await self._hub.cancel(job_id, CANCELLED_BY_CALLER)
                except HubError as exc:
                    self._log.info("could not cancel the job of a cancelled request", job_id=job_id, error=str(exc))
            raise
        return await self._generation_result(ctx, view)

    async def _follow(self, ctx: ServerRequestContext[Any], followed: FollowedJob) -> None:
        """Relay progress until the job ends or the budget is spent (the caller then polls get_generation); every
        event is noted in `followed`."""
        job_id = followed.view.job_id
        sent = await self._report_place(ctx, followed)

        async def report(percent: float, message: str, *, final: bool = False) -> None:
            nonlocal sent
            # MCP wants each notification's progress above the last: a heartbeat that repeats the job's progress
            # (one slow node) or a retry that starts again from 0 is nudged up by a hair, and only the completed
            # job reaches 100.
            if sent is not None:
                percent = max(percent, sent + PROGRESS_NUDGE)
                if percent >= 100.0 and not final:
                    return
            sent = percent
            await ctx.session.report_progress(percent, 100.0, message)

        async def follow() -> None:
            async for event in self._hub.events(job_id):
                followed.note(event)
                if isinstance(event, JobProgress):
                    await report(min(event.percent, 100.0), progress_message(event))
                elif isinstance(event, JobCompleted):
                    await report(100.0, "completed", final=True)
                    return
                elif isinstance(event, (JobFailed, JobCancelled)):
                    return

        with anyio.move_on_after(self._settings.tool_budget_s):
            await follow()

    async def _report_place(self, ctx: ServerRequestContext[Any], followed: FollowedJob) -> float | None:
        """The first progress notification, the place of a waiting job and its expected start (0.0: sent), from the
        dispatcher's view, which `followed` starts from; None when the caller asked for no progress (no view is
        asked: a completed job's answer comes from its events, any other's from a view asked at the end), the
        dispatcher gave none in time or the job no longer waits."""
        if progress_token_from_params(ctx.params) is None:
            return None
        view = await self._view_within(followed.view.job_id)
        if view is None:
            return None
        followed.start_from(view)
        if view.status not in ("accepted", "queued"):
            return None
        await ctx.session.report_progress(0.0, 100.0, status_message(view))
        return 0.0

    async def _view_within(self, job_id: str) -> JobView | None:
        """The dispatcher's view of a held call's job, or None when it does not come within VIEW_WAIT_S: a burst of
        calls (1,000 submitted at once, their budgets ending together) asks the one dispatcher for as many views at
        once, more than it answers in a request timeout. The call then goes on with what it followed (FollowedJob):
        it never fails because the hub is busy. At most VIEW_REQUESTS_AT_ONCE are asked at a time, so a burst does
        not bury the dispatcher under views nobody waits for any more."""
        with anyio.move_on_after(VIEW_WAIT_S):
            try:
                async with self._view_slots:
                    return await self._hub.job(job_id)
            except HubError as exc:
                if exc.code not in (ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE):
                    raise
                self._log.info("the dispatcher gave no view of the job in time", job_id=job_id, error=str(exc))
                return None
        self._log.info("the dispatcher gave no view of the job in time", job_id=job_id, waited_s=VIEW_WAIT_S)
        return None

    async def _generation_result(
        self, ctx: ServerRequestContext[Any], view: JobView, *, thumbnails: bool = True
    ) -> types.CallToolResult:
        result = generation_of(view, _base_url(ctx))
        kept = [image for image in result.images if image.url is not None]  # retention may have removed some
        content: list[Any] = [types.TextContent(text=result_summary(result))]
        for image in kept:
            content.append(
                types.ResourceLink(
                    name=image.filename,
                    uri=image.url or "",
                    mime_type=image.content_type,
                    size=image.size,
                    description=f"generated image of job {result.job_id}",
                )
            )
        if thumbnails and kept:
            budget = self._settings.thumbnail_max_bytes // len(kept)
            for image in kept:
                if not image.content_type.startswith("image/"):
                    continue
                thumb = await self._thumbnail(image.output_id, budget)
                if thumb is not None:
                    content.append(
                        types.ImageContent(data=base64.b64encode(thumb.data).decode(), mime_type=thumb.mime_type)
                    )
        return types.CallToolResult(
            content=content, structured_content=msgspec.to_builtins(result), is_error=view.status == "failed"
        )

    async def _thumbnail(self, output_id: str, max_bytes: int) -> Preview | None:
        """The preview of an output (None: not an image Pillow reads), kept for the THUMBNAILS_KEPT latest: a task
        polled with tasks/get or a generation asked again with get_generation does not decode the image again."""
        key = (output_id, max_bytes)
        if key in self._thumbnails:
            self._thumbnails[key] = self._thumbnails.pop(key)  # the latest used last
            return self._thumbnails[key]
        data = await self._preview_source(output_id)
        thumb = await asyncio.to_thread(preview, data, max_bytes=max_bytes)
        if len(self._thumbnails) >= THUMBNAILS_KEPT:
            del self._thumbnails[next(iter(self._thumbnails))]
        self._thumbnails[key] = thumb
        return thumb

    async def _preview_source(self, output_id: str) -> bytes:
        """What a preview is made from: ComfyUI's JPEG rendition of the output when the dispatcher kept one (the MCP
        door's jobs: it decodes at a fraction of the cost, see dispatch_service.renditions), else the output."""
        try:
            rendition = await self._hub.previews.load(output_id)
        except (HubError, NatsError, TimeoutError) as exc:
            self._log.info("no rendition to preview from", output_id=output_id, error=str(exc) or type(exc).__name__)
            rendition = None
        return rendition or await self._hub.outputs.read_all(output_id)

    # --- tasks (see gateway.mcp_tasks) ---

    async def _legacy_task_call(self, ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
        """2025-11-25 `tools/call` with `params.task`: submit and answer `CreateTaskResult` at once.

        A middleware, because the SDK shapes 2025-era `tools/call` results as `CallToolResult` only.
        """
        params = ctx.params or {}
        if ctx.method != "tools/call" or ctx.protocol_version != TASKS_VERSION or params.get("task") is None:
            return await call_next(ctx)
        name = params.get("name")
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None or not tool.runs_as_task:
            runnable = ", ".join(t.name for t in TOOLS if t.runs_as_task)
            raise MCPError(METHOD_NOT_FOUND, f"`{name}` cannot run as a task (tools that can: {runnable})")
        try:
            job_id = (await self._submit(ctx, self._arguments(tool, params.get("arguments")))).job_id
            view = await self._hub.job(job_id)
        except msgspec.ValidationError as exc:
            info = error_from_validation(exc, tool.name, tool.input_type)
            raise MCPError(INT_INPUT_ERROR, info.message, msgspec.to_builtins(info)) from None
        except HubError as exc:
            code = INTERNAL_ERROR if exc.code in (ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE) else INT_INPUT_ERROR
            raise MCPError(code, exc.info.message, msgspec.to_builtins(exc.info)) from None
        return {"task": legacy_task(view)}

    @staticmethod
    def _modern(ctx: ServerRequestContext[Any]) -> bool:
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        if modern and not declares_tasks_extension(ctx.params):
            raise MCPError(
                MISSING_REQUIRED_CLIENT_CAPABILITY,
                f"Missing required client capability: declare the {TASKS_EXTENSION} extension in "
                "_meta io.modelcontextprotocol/clientCapabilities",
                missing_capability_data(),
            )
        return modern

    async def _task_job(
        self, ctx: ServerRequestContext[Any], task_id: str, *, routed: bool = True, cancel: bool = False
    ) -> JobView:
        """The job of a task the caller may see (`cancel`: may cancel; gateway.job_access decides). `routed`: a
        tasks/* request, whose Mcp-Name names the task."""
        routed_as = ctx.request.headers.get("mcp-name") if ctx.request is not None else None
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        if routed and modern and routed_as is not None and routed_as != task_id:
            # Load balancers route task requests by this header, so a mismatch would reach the wrong place.
            raise MCPError(HEADER_MISMATCH, f"Mcp-Name header `{routed_as}` does not match params.taskId `{task_id}`")
        not_found = MCPError(INT_INPUT_ERROR, f"Failed to retrieve task: task {task_id} not found")
        access = cancellable_job if cancel else readable_job
        try:
            return await access(self._hub, _api_key(ctx), task_id)
        except HubError as exc:
            if exc.code is ErrorCode.NOT_FOUND:  # unknown, or another key's: its existence is not told
                raise not_found from None
            if exc.code is ErrorCode.FORBIDDEN:
                raise MCPError(INT_INPUT_ERROR, exc.info.message) from None
            raise MCPError(INTERNAL_ERROR, exc.info.message) from None

    async def _task_state(self, ctx: ServerRequestContext[Any], view: JobView) -> dict[str, Any]:
        """The 2026-07-28 task of a job, with the tool result inlined once it is complete."""
        task = modern_task(view)
        if task["status"] == "completed":
            result = await self._generation_result(ctx, view)
            task["result"] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return task

    async def _listened_task(self, ctx: ServerRequestContext[Any], task_id: str) -> dict[str, Any] | None:
        try:
            return await self._task_state(ctx, await self._task_job(ctx, task_id, routed=False))
        except MCPError:
            return None  # unknown, or another key's: not honoured on the stream

    async def _tasks_get(self, ctx: ServerRequestContext[Any], ref: TaskRef) -> dict[str, Any]:
        if not self._modern(ctx):
            return legacy_task(await self._task_job(ctx, ref.task_id))
        return await self._task_state(ctx, await self._task_job(ctx, ref.task_id))

    async def _tasks_result(self, ctx: ServerRequestContext[Any], ref: TaskRef) -> dict[str, Any]:
        """2025-11-25: wait for the end of the task and return its tool result."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(METHOD_NOT_FOUND, "tasks/result is not in the 2026-07-28 tasks extension: poll tasks/get")
        view = await self._task_job(ctx, ref.task_id)
        if view.status not in TERMINAL:
            async for event in self._hub.events(view.job_id):
                if isinstance(event, (JobCompleted, JobFailed, JobCancelled)):
                    break
            view = await self._hub.job(view.job_id)
        result = (await self._generation_result(ctx, view)).model_dump(by_alias=True, mode="json", exclude_none=True)
        result.setdefault("_meta", {})[RELATED_TASK_META] = {"taskId": view.job_id}
        return result

    async def _tasks_list(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams) -> dict[str, Any]:
        """2025-11-25: the caller's tasks, newest first, a page at a time. A task is a job, so these are the jobs
        of the caller's API key (those made through REST too); only that key sees them."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(METHOD_NOT_FOUND, "tasks/list is not in the 2026-07-28 tasks extension")
        key = _api_key(ctx)
        try:
            page = await self._hub.jobs_of(key.key_id if key else None, TASKS_PAGE_SIZE, params.cursor)
        except HubError as exc:
            if exc.code is ErrorCode.INVALID_REQUEST:
                raise MCPError(INT_INPUT_ERROR, "Invalid cursor: pass the nextCursor of the previous page") from None
            raise MCPError(INTERNAL_ERROR, exc.info.message) from None
        listing: dict[str, Any] = {"tasks": [legacy_task(view) for view in page.jobs]}
        if page.next_after is not None:
            listing["nextCursor"] = page.next_after
        return listing

    async def _tasks_cancel(self, ctx: ServerRequestContext[Any], ref: TaskRef) -> dict[str, Any]:
        modern = self._modern(ctx)
        view = await self._task_job(ctx, ref.task_id, cancel=True)
        if view.status in TERMINAL:
            if not modern:
                raise MCPError(INT_INPUT_ERROR, f"Cannot cancel task {ref.task_id}: it is already {view.status}")
        else:
            try:
                view = await self._hub.cancel(view.job_id, "cancelled through tasks/cancel")
            except HubError as exc:
                raise MCPError(INTERNAL_ERROR, exc.info.message) from None
        return {} if modern else legacy_task(view)

    async def _tasks_update(self, ctx: ServerRequestContext[Any], update: TaskUpdate) -> dict[str, Any]:
        """2026-07-28: a generation never asks for input, so every response is one the spec says to ignore."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(METHOD_NOT_FOUND, "tasks/update belongs to the 2026-07-28 tasks extension")
        self._modern(ctx)
        await self._task_job(ctx, update.task_id)
        return {}

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
