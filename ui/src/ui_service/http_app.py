"""The admin UI's HTTP application (litestar + Jinja2). It talks to the other services over NATS only.

Every page but /login and /healthz needs the admin session; every form carries a CSRF token; templates
autoescape; any error renders a friendly page (never a stack trace).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar import types as litestar_types
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, ServerSentEvent, Stream, Template
from litestar.response.sse import ServerSentEventMessage
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.template.config import TemplateConfig

from contracts import subjects
from contracts.envelope import Empty
from contracts.errors import ErrorCode, HubError
from contracts.messages.health import HealthReply, HealthRequest
from contracts.messages.instances import (
    DeleteInstance,
    GetInstance,
    Instance,
    InstanceHealth,
    InstanceList,
    InstanceView,
    ListInstances,
    ProbeInstance,
    SaveInstance,
)
from contracts.messages.jobs import (
    FINAL_STATUSES,
    CancelJob,
    GenerationRequest,
    GetJob,
    InputImage,
    JobView,
    QueueView,
    QueueViewRequest,
    SubmitReply,
)
from contracts.messages.keys import ApiKey, ApiKeyList, CreateApiKey, CreatedApiKey, ListApiKeys, RevokeApiKey
from contracts.messages.render_types import (
    AnalyzeWorkflow,
    DeletedRenderType,
    DeleteRenderType,
    GenerationParams,
    GetRenderType,
    GetRenderTypeHistory,
    ListRenderTypes,
    ParameterMap,
    RenderDefaults,
    RenderType,
    RenderTypeHistory,
    RenderTypeList,
    RenderTypeSummary,
    ResolvedWorkflow,
    ResolveRenderType,
    RollbackRenderType,
    SaveRenderType,
    SetDefaultRenderType,
    Slot,
    WorkflowAnalysis,
)
from contracts.messages.stats import (
    ExportLog,
    Figures,
    GetRetention,
    LogExport,
    LogPage,
    QueryFigures,
    QueryLog,
    RetentionPolicy,
    RetentionReport,
    RunRetention,
    SaveRetention,
)
from contracts.messages.styles import (
    BuildPrompt,
    BuiltPrompt,
    DeleteStyle,
    EnhanceResult,
    ExportStyles,
    GetLlmSettings,
    GetStyle,
    ImportReport,
    ImportStyles,
    ListLlmModels,
    ListStyles,
    LlmModels,
    LlmSettings,
    SaveLlmSettings,
    SaveStyle,
    Style,
    StyleExport,
    StyleList,
    TryEnhancement,
)
from contracts.runtime.bus import job_events, request
from contracts.runtime.output_http import output_reply
from contracts.runtime.service import ServiceRuntime
from contracts.runtime.storage import ObjectStoreOutputs, input_image_staged
from contracts.streams import UI_SECRETS, UI_SESSIONS
from ui_service import accounts
from ui_service.sessions import KvSessionStore, open_bucket, shared_secret

HERE = Path(__file__).parent
FINAL_EVENTS = {"completed", "failed", "cancelled"}
SESSION_KEY = "admin"
SESSION_COOKIE = "session"
# Set by the login handler: the session id the signed-in admin gets instead of the one the browser sent.
NEW_SESSION_ID = "ui.new_session_id"


class RotatingSessionBackend(ServerSideSessionBackend):
    """litestar's server-side sessions with two changes: a sign-in gets a fresh session id (no session
    fixation), and an empty session (a visitor who is not signed in) is neither stored nor given a cookie."""

    def get_session_id(self, connection: ASGIConnection) -> str:
        return connection.scope.get(NEW_SESSION_ID) or super().get_session_id(connection)  # type: ignore[misc]

    async def store_in_message(self, scope_session: Any, message: Any, connection: ASGIConnection) -> None:
        if isinstance(scope_session, dict) and not scope_session:
            if not connection.cookies.get(self.config.key):
                return
            scope_session = litestar_types.Empty  # a session emptied by a handler: delete it, expire the cookie
        await super().store_in_message(scope_session, message, connection)


class SessionConfig(ServerSideSessionConfig):
    _backend_class = RotatingSessionBackend


def field_of(error: HubError) -> str:
    """The form input a HubError names: `instance.base_url` -> `base_url`."""
    return (error.info.field or "").rsplit(".", 1)[-1]


def lines(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


def map_to_text(parameter_map: ParameterMap) -> str:
    """A parameter map as lines an admin can edit: `prompt: 6/text, 7/text`."""
    return "\n".join(
        f"{name}: " + ", ".join(f"{slot.node_id}/{slot.input_name}" for slot in slots)
        for name, slots in parameter_map.slots.items()
    )


def text_to_map(text: str) -> ParameterMap:
    slots: dict[str, list[Slot]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, targets = line.partition(":")
        pairs = [target.strip().split("/", 1) for target in targets.split(",") if target.strip()]
        if not sep or not name.strip() or any(len(pair) != 2 for pair in pairs):
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"line {number} should read `parameter: node_id/input_name, ...`",
                field="parameter_map",
            )
        slots[name.strip()] = [Slot(node_id=node.strip(), input_name=field.strip()) for node, field in pairs]
    return ParameterMap(slots=slots)


# The largest input image the dispatcher takes (dispatch_service.jobs.MAX_INPUT_IMAGE_BYTES), and the kinds it
# recognises by their first bytes.
MAX_INPUT_IMAGE_BYTES = 25 * 1024 * 1024
IMAGE_KINDS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF"}


def image_kind(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in IMAGE_KINDS.items() if data.startswith(magic)), None)


def human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} MiB"


def takes_input_image(render_type: RenderTypeSummary | None) -> bool:
    return render_type is not None and "input_image" in render_type.parameters


async def read_input_image(upload: Any, url: str, render_type: RenderTypeSummary | None) -> InputImage | None:
    """The form's input image (an uploaded file, or a URL the hub fetches), checked, or an error naming the field."""
    content = await upload.read() if upload is not None and hasattr(upload, "read") else b""
    filename = getattr(upload, "filename", None) or None
    if not content and not url:
        if takes_input_image(render_type):
            assert render_type is not None
            raise HubError(
                ErrorCode.INVALID_REQUEST,
                f"{render_type.name} starts from an input image: choose a file, or give the image's URL",
                field="input_image_file",
            )
        return None
    field = "input_image_url" if url else "input_image_file"
    if content and url:
        raise HubError(ErrorCode.INVALID_REQUEST, "choose a file or give a URL, not both", field="input_image_file")
    if not takes_input_image(render_type):
        name = render_type.name if render_type else "the chosen render type"
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"{name} takes no input image; pick a render type that does (such as img2img or upscale) or remove it",
            field=field,
        )
    if url:
        if not url.startswith(("http://", "https://")) or len(url) > 4096:
            raise HubError(ErrorCode.INVALID_REQUEST, "the URL must start with http:// or https://", field=field)
        return InputImage(url=url)
    if len(content) > MAX_INPUT_IMAGE_BYTES:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"{filename or 'the file'} is {human_size(len(content))}; the hub takes input images up to "
            f"{human_size(MAX_INPUT_IMAGE_BYTES)}. Scale it down first (a URL has the same limit).",
            field=field,
        )
    if image_kind(content) is None:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"{filename or 'the file'} is not a PNG, JPEG, WebP or GIF image",
            field=field,
        )
    return InputImage(base64=base64.b64encode(content).decode(), filename=filename)


def generation_field(error: HubError) -> str:
    """The test generation form's input a HubError names (the input image's errors go beside its field)."""
    field = error.info.field or ""
    if "input_image" in field:
        return "input_image_url" if field.endswith(".url") or field == "input_image_url" else "input_image_file"
    return field_of(error) or "form"


def render_type_field(error: HubError, fields: set[str]) -> str:
    """The render type form's input a registry error names (`render_type.defaults.width` -> `width`);
    "form" when the form has no such input (the error then shows above the form)."""
    path = (error.info.field or "").removeprefix("render_type.").removeprefix("params.")
    head = path.split(".", 1)[0].split("[", 1)[0]
    if head in ("defaults", "limits"):
        head = path.rsplit(".", 1)[-1]
    head = {"workflow_json": "workflow", "is_default": "enabled", "original_name": "name"}.get(head, head)
    return head if head in fields else "form"


DEFAULT_FIELDS = ("width", "height", "steps", "cfg", "batch_size", "denoise")
EDIT_FIELDS = {"name", "description", "enabled", "workflow", "parameter_map", "note", "negative_prompt"}


def defaults_from_form(form: dict[str, str], base: RenderDefaults) -> RenderDefaults:
    """The defaults an admin typed (an empty box keeps `base`'s value), or an error naming the box."""
    values: dict[str, Any] = {"negative_prompt": form.get("negative_prompt", base.negative_prompt)}
    for name in DEFAULT_FIELDS:
        text = form.get(name, "").strip()
        kind = float if name in ("cfg", "denoise") else int
        try:
            values[name] = kind(text) if text else getattr(base, name)
        except ValueError:
            whole = "a whole number" if kind is int else "a number"
            raise HubError(ErrorCode.INVALID_REQUEST, f"{name} must be {whole}", field=name) from None
    return RenderDefaults(**values)


def workflow_from_form(form: dict[str, str]) -> dict[str, Any]:
    try:
        workflow = msgspec.json.decode(form.get("workflow", "").encode())
    except msgspec.DecodeError as exc:
        raise HubError(ErrorCode.INVALID_REQUEST, f"the workflow is not valid JSON: {exc}", field="workflow") from None
    if not isinstance(workflow, dict):
        raise HubError(
            ErrorCode.INVALID_REQUEST, "the workflow must be a JSON object (ComfyUI's API format)", field="workflow"
        )
    return workflow


def when(timestamp: float | None) -> str:
    """Epoch seconds as the admin reads them in a table: `2026-11-24 16:38 UTC` (every replica alike)."""
    if not timestamp:
        return "\u2013"  # an en dash, as the templates show a missing value
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def add_template_filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["when"] = when


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never another site: no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if not connection.session.get(SESSION_KEY):
        raise NotAuthorizedException("sign in first")


def create_http_app(runtime: ServiceRuntime) -> Litestar:
    session_store = KvSessionStore()
    # The real key comes from the shared secrets bucket at start (below); until then nothing is served.
    csrf_config = CSRFConfig(
        secret=secrets.token_hex(32),
        cookie_httponly=True,
        cookie_samesite="lax",
        exclude=["/healthz", "/static"],
    )

    async def open_shared_state(_runtime: ServiceRuntime) -> None:
        js = runtime.nc.jetstream()
        replicas = runtime.settings.jetstream_replicas
        session_store.open(await open_bucket(js, UI_SESSIONS, replicas))
        csrf_config.secret = await shared_secret(await open_bucket(js, UI_SECRETS, replicas), "csrf")

    runtime.on_startup(open_shared_state)
    kept: dict[str, ObjectStoreOutputs] = {}

    def outputs() -> ObjectStoreOutputs:
        """One store handle for the app (opening the bucket asks JetStream; not once per request)."""
        if "outputs" not in kept:
            kept["outputs"] = ObjectStoreOutputs(runtime.nc.jetstream())
        return kept["outputs"]

    async def ask(subject: str, message: Any, result_type: type, timeout: float = 5.0) -> Any:
        return await request(runtime.nc, subject, message, result_type, timeout=timeout)

    async def try_ask(subject: str, message: Any, result_type: type) -> tuple[Any, str]:
        try:
            return await ask(subject, message, result_type), ""
        except HubError as exc:
            return None, exc.info.message

    def page(name: str, request_: Request, **context: Any) -> Template:
        flash = request_.session.pop("flash", None) if request_.session else None
        return Template(template_name=name, context={"path": request_.url.path, "flash": flash, **context})

    def flash(request_: Request, text: str, kind: str = "ok") -> None:
        request_.session["flash"] = {"text": text, "kind": kind}

    # -- login ------------------------------------------------------------------------------------

    @get("/login")
    async def login_page(request: Request) -> Template:
        return page(
            "login.html",
            request,
            error="",
            has_admin=await accounts.admin_exists(),
            next=safe_next(request.query_params.get("next")),
        )

    @post("/login")
    async def login(request: Request) -> Template | Redirect:
        form = await request.form()
        username = str(form.get("username", "")).strip() or accounts.ADMIN_USERNAME
        if await accounts.check_login(username, str(form.get("password", ""))):
            # A fresh session id on sign-in (no session fixation); whatever the old id held is dropped.
            if old_id := request.cookies.get(SESSION_COOKIE):
                await session_store.delete(old_id)
            request.scope[NEW_SESSION_ID] = secrets.token_hex(32)  # type: ignore[literal-required]
            request.set_session({SESSION_KEY: username, "signed_in_at": time.time()})
            return Redirect(safe_next(request.query_params.get("next")))
        await asyncio.sleep(0.3)  # slows guessing
        return page(
            "login.html",
            request,
            error="Wrong user name or password.",
            has_admin=True,
            next=safe_next(request.query_params.get("next")),
        )

    @post("/logout")
    async def logout(request: Request) -> Redirect:
        request.clear_session()
        return Redirect("/login")

    # -- dashboard --------------------------------------------------------------------------------

    @get("/", guards=[require_admin])
    async def dashboard(request: Request) -> Template:
        last_hour = QueryFigures(group_by="instance", since=time.time() - 3600)
        (instances, instances_error), (queue, queue_error), health, (hour, _) = await asyncio.gather(
            try_ask(subjects.Dispatch.INSTANCES_LIST, ListInstances(), InstanceList),
            try_ask(subjects.Dispatch.QUEUE_VIEW, QueueViewRequest(include_finished=True, limit=24), QueueView),
            service_health(runtime),
            try_ask(subjects.Stats.FIGURES, last_hour, Figures),
        )
        views = instances.instances if instances else []
        jobs = queue.jobs if queue else []
        return page(
            "dashboard.html",
            request,
            instances=views,
            instances_error=instances_error,
            up=sum(1 for v in views if v.health.up),
            queue=queue,
            queue_error=queue_error,
            active=[j for j in jobs if j.status in ("queued", "running", "cancelling")],
            recent=[j for j in jobs if j.status == "completed"][:12],
            failed=[j for j in jobs if j.status == "failed"],
            hour=hour.total if hour else None,
            health=health,
        )

    @get("/ui-images/{output_id:str}", guards=[require_admin])
    async def image(request: Request, output_id: str) -> Response | Stream:
        """An output's bytes from the shared object store, for the signed-in admin only."""
        reply = await output_reply(
            outputs(),
            output_id,
            if_none_match=request.headers.get("if-none-match"),
            range_header=request.headers.get("range"),
            cache_control="private, max-age=3600",
        )
        if reply.status == 404:
            raise HTTPException(status_code=404, detail="This image is no longer stored.")
        if reply.error is not None:
            raise HTTPException(status_code=503, detail=f"The image cannot be read now: {reply.error.info.message}")
        if isinstance(reply.body, bytes):
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)
        return Stream(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)

    # -- instances --------------------------------------------------------------------------------

    async def instances_page(
        request: Request,
        form: dict[str, str] | None = None,
        errors: dict | None = None,
        probe: InstanceHealth | None = None,
    ) -> Template:
        listed, error = await try_ask(subjects.Dispatch.INSTANCES_LIST, ListInstances(), InstanceList)
        return page(
            "instances.html",
            request,
            instances=listed.instances if listed else [],
            load_error=error,
            form=form or {"slots": "1", "weight": "100", "enabled": "on"},
            errors=errors or {},
            probe=probe,
        )

    @get("/instances", guards=[require_admin])
    async def instances(request: Request) -> Template:
        editing = request.query_params.get("edit")
        if not editing:
            return await instances_page(request)
        view = await ask(subjects.Dispatch.INSTANCES_GET, GetInstance(name=editing), InstanceView)
        instance = view.instance
        form = {
            "original_name": instance.name,
            "name": instance.name,
            "base_url": instance.base_url,
            "slots": str(instance.slots),
            "weight": str(instance.weight),
            "tags": ", ".join(instance.tags),
            "enabled": "on" if instance.enabled else "",
        }
        return await instances_page(request, form)

    @post("/instances", guards=[require_admin])
    async def save_instance(request: Request) -> Template | Redirect:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            instance = Instance(
                name=form.get("name", "").strip(),
                base_url=form.get("base_url", "").strip(),
                enabled=form.get("enabled") == "on",
                slots=int(form.get("slots") or 1),
                weight=int(form.get("weight") or 100),
                auth_header=form.get("auth_header") or None,
                tags=lines(form.get("tags", "")),
            )
        except (ValueError, TypeError) as exc:
            return await instances_page(request, form, {"form": f"Check the numbers: {exc}"})
        try:
            view = await ask(
                subjects.Dispatch.INSTANCES_SAVE,
                SaveInstance(instance=instance, original_name=form.get("original_name") or None),
                InstanceView,
                timeout=15,
            )
        except HubError as exc:
            return await instances_page(request, form, {field_of(exc) or "form": exc.info.message})
        flash(request, f"Saved instance {view.instance.name}.")
        return Redirect("/instances")

    @post("/instances/delete", guards=[require_admin])
    async def delete_instance(request: Request) -> Redirect:
        name = str((await request.form()).get("name", ""))
        try:
            await ask(subjects.Dispatch.INSTANCES_DELETE, DeleteInstance(name=name), Empty)
            flash(request, f"Removed instance {name}.")
        except HubError as exc:
            flash(request, exc.info.message, "error")
        return Redirect("/instances")

    @post("/instances/test", guards=[require_admin])
    async def test_instance(request: Request) -> Template:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            health = await ask(
                subjects.Dispatch.INSTANCES_TEST,
                ProbeInstance(base_url=form.get("base_url", "").strip(), auth_header=form.get("auth_header") or None),
                InstanceHealth,
                timeout=20,
            )
        except HubError as exc:
            return await instances_page(request, form, {field_of(exc) or "base_url": exc.info.message})
        return await instances_page(request, form, probe=health)

    # -- styles -----------------------------------------------------------------------------------

    async def styles_page(request: Request, form: dict[str, str] | None = None, errors: dict | None = None) -> Template:
        listed, error = await try_ask(subjects.Prompt.STYLES_LIST, ListStyles(), StyleList)
        query = request.query_params.get("q", "").strip().lower()
        styles = listed.styles if listed else []
        if query:
            styles = [s for s in styles if query in f"{s.name} {s.category} {s.positive}".lower()]
        return page(
            "styles.html",
            request,
            styles=styles,
            query=query,
            load_error=error,
            form=form or {"enabled": "on", "positive": "{prompt}"},
            errors=errors or {},
        )

    @get("/styles", guards=[require_admin])
    async def styles(request: Request) -> Template:
        editing = request.query_params.get("edit")
        if not editing:
            return await styles_page(request)
        style = await ask(subjects.Prompt.STYLES_GET, GetStyle(name=editing), Style)
        form = {
            "original_name": style.name,
            "name": style.name,
            "positive": style.positive,
            "negative": style.negative,
            "category": style.category,
            "render_types": ", ".join(style.render_types),
            "description": style.description,
            "enabled": "on" if style.enabled else "",
            "is_default": "on" if style.is_default else "",
        }
        return await styles_page(request, form)

    @post("/styles", guards=[require_admin])
    async def save_style(request: Request) -> Template | Redirect:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            style = Style(
                name=form.get("name", "").strip(),
                positive=form.get("positive", ""),
                negative=form.get("negative", ""),
                category=form.get("category", "").strip(),
                render_types=lines(form.get("render_types", "")),
                is_default=form.get("is_default") == "on",
                enabled=form.get("enabled") == "on",
                description=form.get("description", ""),
            )
            await ask(
                subjects.Prompt.STYLES_SAVE,
                SaveStyle(style=style, original_name=form.get("original_name") or None),
                Style,
            )
        except HubError as exc:
            return await styles_page(request, form, {field_of(exc) or "form": exc.info.message})
        except (ValueError, TypeError) as exc:
            return await styles_page(request, form, {"form": str(exc)})
        flash(request, f"Saved style {style.name}.")
        return Redirect("/styles")

    @post("/styles/delete", guards=[require_admin])
    async def delete_style(request: Request) -> Redirect:
        name = str((await request.form()).get("name", ""))
        try:
            await ask(subjects.Prompt.STYLES_DELETE, DeleteStyle(name=name), Empty)
            flash(request, f"Deleted style {name}.")
        except HubError as exc:
            flash(request, exc.info.message, "error")
        return Redirect("/styles")

    @post("/styles/import", guards=[require_admin])
    async def import_styles(request: Request) -> Template | Redirect:
        data = await request.form()
        upload = data.get("file")
        content = str(data.get("content", ""))
        if upload is not None and hasattr(upload, "read"):
            content = (await upload.read()).decode("utf-8", errors="replace") or content
        try:
            report = await ask(
                subjects.Prompt.STYLES_IMPORT,
                ImportStyles(
                    format=str(data.get("format", "fooocus_json")),  # type: ignore[arg-type]
                    content=content,
                    on_conflict="update" if data.get("on_conflict") == "update" else "skip",
                    category=str(data.get("category", "")),
                ),
                ImportReport,
                timeout=30,
            )
        except HubError as exc:
            return await styles_page(request, errors={"import": exc.info.message})
        skipped = f", skipped {len(report.skipped)}" if report.skipped else ""
        flash(request, f"Imported: {len(report.added)} added, {len(report.updated)} updated{skipped}.")
        return Redirect("/styles")

    @get("/styles/export", guards=[require_admin])
    async def export_styles(request: Request) -> Response[str]:
        export_format = "a1111_csv" if request.query_params.get("format") == "a1111_csv" else "fooocus_json"
        exported = await ask(subjects.Prompt.STYLES_EXPORT, ExportStyles(format=export_format), StyleExport)
        return Response(
            exported.content,
            media_type="text/csv" if export_format == "a1111_csv" else "application/json",
            headers={"Content-Disposition": f'attachment; filename="{exported.filename}"'},
        )

    # -- prompt building and enhancement -------------------------------------------------------------

    async def prompt_page(request: Request, **context: Any) -> Template:
        (settings, settings_error), (styles, _) = await asyncio.gather(
            try_ask(subjects.Prompt.LLM_SETTINGS_GET, GetLlmSettings(), LlmSettings),
            try_ask(subjects.Prompt.STYLES_LIST, ListStyles(include_disabled=False), StyleList),
        )
        models: list[str] = []
        models_error = ""
        if settings is not None:
            listed, models_error = await try_ask(subjects.Prompt.LLM_MODELS, ListLlmModels(), LlmModels)
            models = listed.models if listed else []
        context.setdefault("errors", {})
        context.setdefault("form", {})
        return page(
            "prompt.html",
            request,
            settings=settings,
            settings_error=settings_error,
            models=models,
            models_error=models_error,
            styles=styles.styles if styles else [],
            **context,
        )

    @get("/prompt", guards=[require_admin])
    async def prompt_settings(request: Request) -> Template:
        return await prompt_page(request)

    @post("/prompt/llm", guards=[require_admin])
    async def save_llm(request: Request) -> Template | Redirect:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            current = await ask(subjects.Prompt.LLM_SETTINGS_GET, GetLlmSettings(), LlmSettings)
            settings = msgspec.structs.replace(
                current,
                provider=form.get("provider", current.provider),
                base_url=form.get("base_url", "").strip(),
                model=form.get("model", "").strip(),
                system_prompt=form.get("system_prompt", ""),
                timeout_s=float(form.get("timeout_s") or current.timeout_s),
                temperature=float(form.get("temperature") or current.temperature),
                api_key=form.get("api_key") or None,
            )
            await ask(subjects.Prompt.LLM_SETTINGS_SAVE, SaveLlmSettings(settings=settings), LlmSettings)
        except ValueError:
            return await prompt_page(request, errors={"timeout_s": "Timeout and temperature must be numbers."})
        except HubError as exc:
            return await prompt_page(request, errors={field_of(exc) or "llm": exc.info.message})
        flash(request, "Saved the prompt enhancement settings.")
        return Redirect("/prompt")

    @post("/prompt/test", guards=[require_admin])
    async def test_llm(request: Request) -> Template:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            result = await ask(
                subjects.Prompt.LLM_TEST, TryEnhancement(prompt=form.get("test_prompt", "")), EnhanceResult, 90
            )
        except HubError as exc:
            return await prompt_page(request, form=form, errors={"test_prompt": exc.info.message})
        return await prompt_page(request, form=form, enhance=result)

    @post("/prompt/preview", guards=[require_admin])
    async def preview_prompt(request: Request) -> Template:
        data = await request.form()
        form = {k: str(v) for k, v in data.items() if k != "styles"}
        chosen = [str(v) for v in data.getall("styles")] if "styles" in data else []
        form["styles"] = ",".join(chosen)
        try:
            built = await ask(
                subjects.Prompt.PREVIEW,
                BuildPrompt(
                    prompt=form.get("preview_prompt", ""),
                    negative_prompt=form.get("preview_negative", ""),
                    styles=chosen or None,
                ),
                BuiltPrompt,
            )
        except HubError as exc:
            field = {"prompt": "preview_prompt", "negative_prompt": "preview_negative"}.get(field_of(exc), "styles")
            return await prompt_page(request, form=form, errors={field: exc.info.message})
        return await prompt_page(request, form=form, built=built)

    # -- API keys (the gateway's) -------------------------------------------------------------------

    async def keys_page(request: Request, errors: dict | None = None, form: dict | None = None) -> Template:
        listed, error = await try_ask(subjects.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True), ApiKeyList)
        # The new secret rides in the session for exactly one page view (post/redirect/get: a reload
        # neither creates a second key nor shows the secret again).
        created = request.session.pop("new_key", None) if request.session else None
        return page(
            "api_keys.html",
            request,
            keys=listed.keys if listed else [],
            load_error=error,
            created=created,
            errors=errors or {},
            form=form or {},
        )

    @get("/api-keys", guards=[require_admin])
    async def api_keys(request: Request) -> Template:
        return await keys_page(request)

    @post("/api-keys", guards=[require_admin])
    async def create_api_key(request: Request) -> Template | Redirect:
        name = str((await request.form()).get("name", "")).strip()
        try:
            created = await ask(subjects.Gateway.KEYS_CREATE, CreateApiKey(name=name), CreatedApiKey)
        except HubError as exc:
            return await keys_page(request, errors={"name": exc.info.message}, form={"name": name})
        request.session["new_key"] = {"name": created.key.name, "secret": created.secret}
        return Redirect("/api-keys")

    @post("/api-keys/revoke", guards=[require_admin])
    async def revoke_api_key(request: Request) -> Redirect:
        key_id = str((await request.form()).get("key_id", ""))
        try:
            revoked = await ask(subjects.Gateway.KEYS_REVOKE, RevokeApiKey(key_id=key_id), ApiKey)
            flash(request, f"Revoked the key {revoked.name}.")
        except HubError as exc:
            flash(request, exc.info.message, "error")
        return Redirect("/api-keys")

    # -- render types ---------------------------------------------------------------------------------

    @get("/render-types", guards=[require_admin])
    async def render_types(request: Request) -> Template:
        listed, error = await try_ask(subjects.Registry.LIST, ListRenderTypes(), RenderTypeList)
        return page("render_types.html", request, render_types=listed.render_types if listed else [], error=error)

    @post("/render-types/default", guards=[require_admin])
    async def set_default_render_type(request: Request) -> Redirect:
        name = str((await request.form()).get("name", ""))
        try:
            await ask(subjects.Registry.SET_DEFAULT, SetDefaultRenderType(name=name), RenderType)
            flash(request, f"{name} is now the default render type.")
        except HubError as exc:
            flash(request, exc.info.message, "error")
        return Redirect("/render-types")

    def new_render_type_page(
        request: Request, form: dict[str, str], errors: dict | None = None, analysis: WorkflowAnalysis | None = None
    ) -> Template:
        return page("render_type_new.html", request, form=form, errors=errors or {}, analysis=analysis)

    @get("/render-types/new", guards=[require_admin])
    async def new_render_type(request: Request) -> Template:
        return new_render_type_page(request, {})

    @post("/render-types/analyze", guards=[require_admin])
    async def analyze_workflow(request: Request) -> Template:
        data = await request.form()
        form = {k: str(v) for k, v in data.items() if k != "workflow_file"}
        upload = data.get("workflow_file")
        if upload is not None and hasattr(upload, "read"):
            content = await upload.read()
            if content:
                form["workflow"] = content.decode("utf-8", errors="replace")
        try:
            analysis = await ask(
                subjects.Registry.ANALYZE, AnalyzeWorkflow(workflow_json=form.get("workflow", "")), WorkflowAnalysis
            )
        except HubError as exc:
            return new_render_type_page(request, form, {"workflow": exc.info.message})
        defaults = analysis.proposed_defaults
        form.update(
            parameter_map=map_to_text(analysis.proposed_map),
            width=str(defaults.width),
            height=str(defaults.height),
            steps=str(defaults.steps),
            cfg=str(defaults.cfg),
            batch_size=str(defaults.batch_size),
            denoise=str(defaults.denoise),
            negative_prompt=defaults.negative_prompt,
            output_kind=analysis.output_kind,
        )
        return new_render_type_page(request, form, analysis=analysis)

    @post("/render-types/save", guards=[require_admin])
    async def save_render_type(request: Request) -> Template | Redirect:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            saved = await ask(
                subjects.Registry.SAVE,
                SaveRenderType(
                    render_type=RenderType(
                        name=form.get("name", "").strip(),
                        description=form.get("description", ""),
                        workflow=workflow_from_form(form),
                        parameter_map=text_to_map(form.get("parameter_map", "")),
                        defaults=defaults_from_form(form, RenderDefaults()),
                        output_kind=form.get("output_kind") or "image",  # type: ignore[arg-type]
                    ),
                    note=form.get("note", "") or "created in the admin UI",
                ),
                RenderType,
            )
        except HubError as exc:
            fields = {"parameter_map", "name", "description", "note", "negative_prompt", *DEFAULT_FIELDS}
            return new_render_type_page(request, form, {render_type_field(exc, fields): exc.info.message})
        flash(request, f"Saved render type {saved.name} (version {saved.version}).")
        return Redirect(f"/render-types/{saved.name}")

    # Editing: the whole definition is sent back with the version the edit started from; the registry
    # stores all of it as a new version or nothing (a stale version is a conflict, shown as such).
    def edit_form_of(render_type: RenderType) -> dict[str, str]:
        defaults = render_type.defaults
        return {
            "name": render_type.name,
            "description": render_type.description,
            "enabled": "on" if render_type.enabled else "",
            "workflow": msgspec.json.format(msgspec.json.encode(render_type.workflow)).decode(),
            "parameter_map": map_to_text(render_type.parameter_map),
            "negative_prompt": defaults.negative_prompt,
            "version": str(render_type.version),
            **{name: str(getattr(defaults, name)) for name in DEFAULT_FIELDS},
        }

    async def edit_render_type_page(
        request: Request, name: str, form: dict[str, str] | None = None, errors: dict | None = None
    ) -> Template:
        render_type = await ask(subjects.Registry.GET, GetRenderType(name=name), RenderType)
        return page(
            "render_type_edit.html",
            request,
            rt=render_type,
            form=form or edit_form_of(render_type),
            errors=errors or {},
        )

    @get("/render-types/{name:str}/edit", guards=[require_admin])
    async def edit_render_type(request: Request, name: str) -> Template:
        return await edit_render_type_page(request, name)

    @post("/render-types/{name:str}/edit", guards=[require_admin])
    async def update_render_type(request: Request, name: str) -> Template | Redirect:
        data = await request.form()
        form = {k: str(v) for k, v in data.items() if k != "workflow_file"}
        upload = data.get("workflow_file")
        if upload is not None and hasattr(upload, "read") and (content := await upload.read()):
            form["workflow"] = content.decode("utf-8", errors="replace")
        try:
            current = await ask(subjects.Registry.GET, GetRenderType(name=name), RenderType)
            version = int(form.get("version") or current.version)
            saved = await ask(
                subjects.Registry.SAVE,
                SaveRenderType(
                    render_type=msgspec.structs.replace(
                        current,
                        name=form.get("name", "").strip(),
                        description=form.get("description", ""),
                        enabled=form.get("enabled") == "on",
                        workflow=workflow_from_form(form),
                        parameter_map=text_to_map(form.get("parameter_map", "")),
                        defaults=defaults_from_form(form, current.defaults),
                        version=version,
                    ),
                    original_name=name,
                    note=form.get("note", "").strip(),
                ),
                RenderType,
            )
        except HubError as exc:
            field = render_type_field(exc, EDIT_FIELDS | set(DEFAULT_FIELDS))
            return await edit_render_type_page(request, name, form, {field: exc.info.message})
        if saved.version == int(form.get("version") or 0):
            flash(request, f"Nothing changed: {saved.name} stays at version {saved.version}.")
        else:
            flash(request, f"Saved render type {saved.name} (version {saved.version}).")
        return Redirect(f"/render-types/{saved.name}")

    @get("/render-types/{name:str}/delete", guards=[require_admin])
    async def confirm_delete_render_type(request: Request, name: str) -> Template:
        render_type, history = await asyncio.gather(
            ask(subjects.Registry.GET, GetRenderType(name=name), RenderType),
            ask(subjects.Registry.HISTORY, GetRenderTypeHistory(name=name), RenderTypeHistory),
        )
        return page("render_type_delete.html", request, rt=render_type, versions=len(history.versions), error="")

    @post("/render-types/{name:str}/delete", guards=[require_admin])
    async def delete_render_type(request: Request, name: str) -> Template | Redirect:
        expected = str((await request.form()).get("version", ""))
        try:
            deleted = await ask(
                subjects.Registry.DELETE,
                DeleteRenderType(name=name, expected_version=int(expected) if expected.isdigit() else None),
                DeletedRenderType,
            )
        except HubError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                flash(request, exc.info.message, "error")
                return Redirect("/render-types")
            render_type, history = await asyncio.gather(
                ask(subjects.Registry.GET, GetRenderType(name=name), RenderType),
                ask(subjects.Registry.HISTORY, GetRenderTypeHistory(name=name), RenderTypeHistory),
            )
            return page(
                "render_type_delete.html",
                request,
                rt=render_type,
                versions=len(history.versions),
                error=exc.info.message,
            )
        plural = "s" if deleted.versions_removed != 1 else ""
        flash(request, f"Deleted render type {deleted.name} and its {deleted.versions_removed} version{plural}.")
        return Redirect("/render-types")

    async def render_type_detail_page(
        request: Request, name: str, resolved: ResolvedWorkflow | None = None, errors: dict | None = None
    ) -> Template:
        render_type, history = await asyncio.gather(
            ask(subjects.Registry.GET, GetRenderType(name=name), RenderType),
            ask(subjects.Registry.HISTORY, GetRenderTypeHistory(name=name), RenderTypeHistory),
        )
        return page(
            "render_type.html",
            request,
            rt=render_type,
            history=history.versions,
            parameter_map=map_to_text(render_type.parameter_map),
            resolved=resolved,
            resolved_json=msgspec.json.format(msgspec.json.encode(resolved.workflow)).decode() if resolved else "",
            errors=errors or {},
        )

    @get("/render-types/{name:str}", guards=[require_admin])
    async def render_type_detail(request: Request, name: str) -> Template:
        return await render_type_detail_page(request, name)

    @post("/render-types/{name:str}/rollback", guards=[require_admin])
    async def rollback_render_type(request: Request, name: str) -> Redirect:
        version = str((await request.form()).get("version", "0"))
        try:
            await ask(subjects.Registry.ROLLBACK, RollbackRenderType(name=name, version=int(version)), RenderType)
            flash(request, f"Rolled {name} back to version {version}.")
        except (HubError, ValueError) as exc:
            flash(request, exc.info.message if isinstance(exc, HubError) else "no such version", "error")
        return Redirect(f"/render-types/{name}")

    @post("/render-types/{name:str}/dry-run", guards=[require_admin])
    async def dry_run_render_type(request: Request, name: str) -> Template:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            resolved = await ask(
                subjects.Registry.RESOLVE,
                ResolveRenderType(
                    render_type=name,
                    params=GenerationParams(
                        prompt=form.get("prompt", ""),
                        negative_prompt=form.get("negative_prompt", ""),
                        seed=int(form["seed"]) if form.get("seed", "").isdigit() else None,
                    ),
                ),
                ResolvedWorkflow,
            )
        except HubError as exc:
            return await render_type_detail_page(request, name, errors={field_of(exc) or "prompt": exc.info.message})
        return await render_type_detail_page(request, name, resolved=resolved)

    # -- test generation ----------------------------------------------------------------------------

    async def generate_page(
        request: Request, form: dict[str, str] | None = None, errors: dict | None = None
    ) -> Template:
        (render_types, _), (styles, _) = await asyncio.gather(
            try_ask(subjects.Registry.LIST, ListRenderTypes(include_disabled=False), RenderTypeList),
            try_ask(subjects.Prompt.STYLES_LIST, ListStyles(include_disabled=False), StyleList),
        )
        listed = render_types.render_types if render_types else []
        return page(
            "generate.html",
            request,
            render_types=listed,
            default_render_type=next((rt for rt in listed if rt.is_default), None),
            styles=styles.styles if styles else [],
            form=form or {"count": "1", "style_mode": "default"},
            errors=errors or {},
            upload_limit=MAX_INPUT_IMAGE_BYTES,
            upload_limit_text=human_size(MAX_INPUT_IMAGE_BYTES),
        )

    @get("/generate", guards=[require_admin])
    async def generate(request: Request) -> Template:
        return await generate_page(request)

    @post("/generate", guards=[require_admin])
    async def submit_generation(request: Request) -> Template | Redirect:
        data = await request.form()
        form = {k: str(v) for k, v in data.items() if k not in ("styles", "input_image_file")}
        chosen_styles = [str(v) for v in data.getall("styles")] if "styles" in data else []
        form["styles"] = ",".join(chosen_styles)

        def number(name: str, kind: type = int) -> Any:
            text = form.get(name, "").strip()
            if not text:
                return None
            try:
                return kind(text)
            except ValueError:
                raise HubError(ErrorCode.INVALID_REQUEST, f"{name} must be a number", field=name) from None

        try:
            listed = await ask(subjects.Registry.LIST, ListRenderTypes(include_disabled=False), RenderTypeList)
            chosen = next(
                (
                    rt
                    for rt in listed.render_types
                    if rt.name == form.get("render_type") or (not form.get("render_type") and rt.is_default)
                ),
                None,
            )
            input_image = await read_input_image(
                data.get("input_image_file"), form.get("input_image_url", "").strip(), chosen
            )
            generation = GenerationRequest(
                prompt=form.get("prompt", ""),
                negative_prompt=form.get("negative_prompt", ""),
                render_type=form.get("render_type") or None,
                styles=None if form.get("style_mode") == "default" else chosen_styles,
                enhance_prompt=form.get("enhance_prompt") == "on",
                seed=number("seed"),
                width=number("width"),
                height=number("height"),
                steps=number("steps"),
                cfg=number("cfg", float),
                count=number("count") or 1,
                input_image=input_image,
                client_name="admin-ui",
            )
            # An uploaded image goes through the object store, not inside the NATS request (max_payload).
            async with input_image_staged(outputs(), generation) as staged:
                reply = await ask(subjects.Dispatch.JOBS_SUBMIT, staged, SubmitReply, timeout=60)
        except HubError as exc:
            return await generate_page(request, form, {generation_field(exc): exc.info.message})
        return Redirect(f"/jobs/{reply.job_id}")

    @get("/jobs/{job_id:str}", guards=[require_admin])
    async def job_page(request: Request, job_id: str) -> Template:
        view = await ask(subjects.Dispatch.JOBS_GET, GetJob(job_id=job_id), JobView)
        return page("job.html", request, job=view, final=view.status in FINAL_STATUSES)

    @post("/jobs/{job_id:str}/cancel", guards=[require_admin])
    async def cancel_job(request: Request, job_id: str) -> Redirect:
        try:
            await ask(subjects.Dispatch.JOBS_CANCEL, CancelJob(job_id=job_id, reason="cancelled by the admin"), JobView)
        except HubError as exc:
            flash(request, exc.info.message, "error")
        return Redirect(f"/jobs/{job_id}")

    @get("/jobs/{job_id:str}/events", guards=[require_admin])
    async def job_event_stream(job_id: str) -> ServerSentEvent:
        """The job's generation events, replayed from JetStream from the first one, as server-sent events."""

        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            async for event in job_events(runtime.nc, job_id, idle_s=15):
                if event is None:
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                kind = type(event).__struct_config__.tag
                data = msgspec.json.encode(event).decode()
                yield ServerSentEventMessage(data=data, event=str(kind), id=event.event_id)
                if kind in FINAL_EVENTS:
                    return

        return ServerSentEvent(stream())

    # -- statistics and maintenance ------------------------------------------------------------------

    @get("/stats", guards=[require_admin])
    async def stats(request: Request) -> Template:
        params = request.query_params
        filters = {key: params.get(key, "").strip() for key in ("status", "render_type", "instance", "text")}
        page_number = max(1, int(params.get("page", "1")) if params.get("page", "1").isdigit() else 1)
        days = int(params.get("days", "14")) if params.get("days", "14").isdigit() else 14
        since = time.time() - days * 86400
        per_page = 25
        log_query = QueryLog(
            status=filters["status"] or None,  # type: ignore[arg-type]
            render_type=filters["render_type"] or None,
            instance=filters["instance"] or None,
            text=filters["text"] or None,
            limit=per_page,
            offset=(page_number - 1) * per_page,
        )
        (per_day, _), (per_render_type, _), (per_instance, _), (log, log_error) = await asyncio.gather(
            try_ask(subjects.Stats.FIGURES, QueryFigures(group_by="day", since=since), Figures),
            try_ask(subjects.Stats.FIGURES, QueryFigures(group_by="render_type", since=since), Figures),
            try_ask(subjects.Stats.FIGURES, QueryFigures(group_by="instance", since=since), Figures),
            try_ask(subjects.Stats.LOG_QUERY, log_query, LogPage),
        )
        return page(
            "stats.html",
            request,
            per_day=per_day,
            per_render_type=per_render_type,
            per_instance=per_instance,
            log=log,
            log_error=log_error,
            filters=filters,
            days=days,
            page_number=page_number,
            page_query=lambda number: urlencode({**{k: v for k, v in filters.items() if v}, "page": number}),
            pages=max(1, -(-log.total // per_page)) if log else 1,
        )

    async def maintenance_page(
        request: Request, errors: dict | None = None, report: Any = None, form: dict[str, str] | None = None
    ) -> Template:
        policy, error = await try_ask(subjects.Stats.RETENTION_GET, GetRetention(), RetentionPolicy)
        return page(
            "maintenance.html",
            request,
            policy=policy,
            load_error=error,
            errors=errors or {},
            report=report,
            form=form,
        )

    @get("/maintenance", guards=[require_admin])
    async def maintenance(request: Request) -> Template:
        return await maintenance_page(request)

    @post("/maintenance/retention", guards=[require_admin])
    async def save_retention(request: Request) -> Template | Redirect:
        form = {k: str(v) for k, v in (await request.form()).items()}
        values: dict[str, Any] = {}
        for name, kind, unit in (
            ("keep_images_days", int, "whole days"),
            ("keep_log_days", int, "whole days"),
            ("run_every_hours", float, "hours"),
        ):
            try:
                values[name] = kind(form.get(name, "").strip() or 0)
            except ValueError:
                return await maintenance_page(request, {name: f"give a number of {unit}"}, form=form)
        try:
            await ask(subjects.Stats.RETENTION_SAVE, SaveRetention(policy=RetentionPolicy(**values)), RetentionPolicy)
        except HubError as exc:
            return await maintenance_page(request, {field_of(exc) or "form": exc.info.message}, form=form)
        flash(request, "Saved the retention policy.")
        return Redirect("/maintenance")

    @post("/maintenance/clean", guards=[require_admin])
    async def clean_now(request: Request) -> Template:
        dry_run = (await request.form()).get("dry_run") == "on"
        report, error = await try_ask(subjects.Stats.RETENTION_RUN, RunRetention(dry_run=dry_run), RetentionReport)
        return await maintenance_page(request, {"form": error} if error else None, report=report)

    @get("/maintenance/export", guards=[require_admin])
    async def export_log(request: Request) -> Response[str]:
        export_format = "jsonl" if request.query_params.get("format") == "jsonl" else "csv"
        query = QueryLog(until=time.time())
        parts: list[str] = []
        filename = f"generations.{export_format}"
        while True:
            part = await ask(subjects.Stats.EXPORT, ExportLog(format=export_format, query=query), LogExport, timeout=30)
            parts.append(part.content)
            filename = part.filename
            if part.next_offset is None:
                break
            query = msgspec.structs.replace(query, offset=part.next_offset)
        return Response(
            "".join(parts),
            media_type="text/csv" if export_format == "csv" else "application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    # -- plumbing ---------------------------------------------------------------------------------

    @get("/status", guards=[require_admin])
    async def status_page(request: Request) -> Template:
        return page("status.html", request, rows=await service_health(runtime))

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, object]:
        return {"service": runtime.name, "version": runtime.version, "instance_id": runtime.instance_id}

    def on_not_authorized(request: Request, _: Exception) -> Response:
        return Redirect(f"/login?next={request.url.path}")

    def on_http_error(request: Request, exc: HTTPException) -> Response:
        titles = {403: "This form has expired", 404: "Not found", 405: "Not allowed", 413: "Upload too large"}
        hint = {
            403: "The form's security token was missing or stale. Go back, reload the page and try again.",
            413: "The form sent more than 32 MiB. Go back and choose a smaller file, or give a large image by URL.",
        }.get(exc.status_code, exc.detail)
        return Template(
            template_name="error.html",
            context={"title": titles.get(exc.status_code, "Something went wrong"), "message": hint, "path": ""},
            status_code=exc.status_code,
        )

    def on_error(request: Request, exc: Exception) -> Response:
        ref = secrets.token_hex(4)
        runtime.log.error("page failed", path=request.url.path, ref=ref, error=repr(exc))
        message = exc.info.message if isinstance(exc, HubError) else "The page could not be shown."
        missing = isinstance(exc, HubError) and exc.code is ErrorCode.NOT_FOUND
        return Template(
            template_name="error.html",
            context={
                "title": "Not found" if missing else "Something went wrong",
                "message": message,
                "ref": "" if missing else ref,
                "path": "",
            },
            status_code=404 if missing else HTTP_500_INTERNAL_SERVER_ERROR,
        )

    return Litestar(
        route_handlers=[
            login_page,
            login,
            logout,
            dashboard,
            image,
            instances,
            save_instance,
            delete_instance,
            test_instance,
            styles,
            save_style,
            import_styles,
            export_styles,
            prompt_settings,
            save_llm,
            test_llm,
            preview_prompt,
            api_keys,
            create_api_key,
            revoke_api_key,
            render_types,
            set_default_render_type,
            new_render_type,
            analyze_workflow,
            save_render_type,
            render_type_detail,
            edit_render_type,
            update_render_type,
            confirm_delete_render_type,
            delete_render_type,
            rollback_render_type,
            dry_run_render_type,
            generate,
            submit_generation,
            job_page,
            cancel_job,
            job_event_stream,
            stats,
            maintenance,
            save_retention,
            clean_now,
            export_log,
            delete_style,
            status_page,
            healthz,
            create_static_files_router(path="/static", directories=[HERE / "static"]),
        ],
        template_config=TemplateConfig(
            directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=add_template_filters
        ),
        middleware=[
            SessionConfig(
                key=SESSION_COOKIE, httponly=True, samesite="lax", max_age=int(UI_SESSIONS.ttl_s), store="sessions"
            ).middleware
        ],
        stores={"sessions": session_store},
        csrf_config=csrf_config,
        exception_handlers={
            NotAuthorizedException: on_not_authorized,
            HTTPException: on_http_error,
            Exception: on_error,
        },
        request_max_body_size=32 * 1024 * 1024,  # an image or workflow upload beyond it gets a clear 413 page
        openapi_config=None,
        logging_config=None,  # the service runtime owns logging
        debug=False,
    )


async def service_health(runtime: ServiceRuntime) -> list[tuple[str, HealthReply | None, str]]:
    async def one(service: str) -> tuple[str, HealthReply | None, str]:
        try:
            return (
                service,
                await request(runtime.nc, subjects.health(service), HealthRequest(), HealthReply, timeout=2),
                "",
            )
        except HubError as exc:
            return service, None, exc.info.message

    return list(await asyncio.gather(*(one(service) for service in subjects.SERVICES)))
