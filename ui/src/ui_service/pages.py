"""What every page of the admin UI shares: rendering with the flash message, the admin guard, and the one place
where a service's error becomes what the admin sees (beside a form field, as a flash, or as an error page)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE

from contracts.endpoints import Endpoint, Req
from contracts.errors import ErrorCode, HubError
from contracts.messages.render_types import RenderType
from ui_service.hub_client import HubClient

SESSION_KEY = "admin"

# Names the form input a HubError belongs beside.
FieldNamer = Callable[[HubError], str]


def page(
    name: str, request: Request, *, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> Template:
    flash_message = request.session.pop("flash", None) if request.session else None
    return Template(
        template_name=name,
        context={"path": request.url.path, "flash": flash_message, **context},
        status_code=status_code,
        headers=headers,
    )


def flash(request: Request, text: str, kind: str = "ok") -> None:
    request.session["flash"] = {"text": text, "kind": kind}


def when(timestamp: float | None) -> str:
    """Epoch seconds as the admin reads them in a table: `2026-11-24 16:38 UTC` (every replica alike)."""
    if not timestamp:
        return "\u2013"  # an en dash, as the templates show a missing value
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


SETTINGS_SHOWN = (("steps", "{} steps"), ("cfg", "cfg {}"), ("denoise", "denoise {}"), ("batch_size", "batch {}"))
TIMES = "\u00d7"  # the multiplication sign of "1024 x 1024", as the other pages write sizes


def settings_line(defaults: Mapping[str, Any]) -> str:
    """A render type's default settings in one line, only those its workflow has ("1024 x 1024 · 30 steps · cfg 7"
    with a multiplication sign; an upscale shows none, a flux workflow no cfg)."""
    parts = [f"{defaults['width']}{TIMES}{defaults['height']}"] if "width" in defaults and "height" in defaults else []
    for name, shown in SETTINGS_SHOWN:
        if name in defaults:
            value = defaults[name]
            parts.append(shown.format(f"{value:g}" if isinstance(value, float) else value))
    return " · ".join(parts) or "no settings (the workflow fixes them)"


def mapped_defaults(render_type: RenderType) -> dict[str, Any]:
    """The defaults of the parameters a full render type's workflow has (as its summary lists them)."""
    values = msgspec.to_builtins(render_type.defaults)
    return {name: values[name] for name in render_type.parameter_map.slots if name in values}


def plural(count: int, noun: str) -> str:
    """`1 model`, `2 models`, `0 log rows` (English nouns the pages count take an s)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} MiB"


def add_template_filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["when"] = when
    engine.engine.filters["settings_line"] = settings_line
    engine.engine.filters["plural"] = plural
    engine.engine.filters["size"] = human_size


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never another site: no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if not connection.session.get(SESSION_KEY):
        raise NotAuthorizedException("sign in first")


# -- a service's error, shown to the admin -------------------------------------------------------------


def field_of(error: HubError) -> str:
    """The form input a HubError names: `instance.base_url` -> `base_url`."""
    # An item's error belongs beside its list's box: `style.render_types[1]` -> `render_types`.
    return (error.info.field or "").rsplit(".", 1)[-1].split("[", 1)[0]


def named_or(default: str) -> FieldNamer:
    """The input the error names, or `default` when it names none."""
    return lambda error: field_of(error) or default


def always(name: str) -> FieldNamer:
    """Every error of this form shows beside one input."""
    return lambda _: name


class Rejection:
    """Catches the HubError a form's submission meets, as the errors the form shows again:

    with Rejection(named_or("form")) as rejected:
        await hub.ask(...)
    if rejected:
        return await the_form_again(errors=rejected.errors)
    """

    def __init__(self, field: FieldNamer | None = None) -> None:
        self._field = field or named_or("form")
        self.error: HubError | None = None

    def __enter__(self) -> Rejection:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(exc, HubError):
            self.error = exc
            return True
        return False

    def __bool__(self) -> bool:
        return self.error is not None

    @property
    def code(self) -> ErrorCode | None:
        return self.error.code if self.error else None

    @property
    def message(self) -> str:
        return self.error.info.message if self.error else ""

    @property
    def errors(self) -> dict[str, str]:
        return {self._field(self.error): self.error.info.message} if self.error else {}


def act_then_redirect(request: Request, target: str, rejected: Rejection, done: str) -> Redirect:
    """After a button's action: the admin returns to `target` with what happened (`done`, or the error)."""
    if rejected:
        flash(request, rejected.message, "error")
    else:
        flash(request, done)
    return Redirect(target)


async def ask_then_redirect(
    request: Request, hub: HubClient, endpoint: Endpoint[Req, Any], message: Req, *, target: str, done: str
) -> Redirect:
    """A button's one request: the admin returns to `target` with `done`, or with the service's error."""
    with Rejection() as rejected:
        await hub.ask(endpoint, message)
    return act_then_redirect(request, target, rejected, done)


# -- errors no page handled ------------------------------------------------------------------------------


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
    if isinstance(exc, HubError) and exc.info.details and "retry_after_s" in exc.info.details:
        return _reconnecting_page(exc)  # not a failure of the page: no error logged
    ref = secrets.token_hex(4)
    request.app.state.hub.log.error("page failed", path=request.url.path, ref=ref, error=repr(exc))
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


def _reconnecting_page(exc: HubError) -> Response:
    """NATS is away for the moment (contracts.runtime.bus.require_connection): a 503 the browser may retry."""
    # require_connection's UNAVAILABLE error always carries details with `retry_after_s`.
    retry_after = str(exc.info.details["retry_after_s"])  # type: ignore[index]
    return Template(
        template_name="error.html",
        context={"title": "The hub is reconnecting", "message": exc.info.message, "ref": "", "path": ""},
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": retry_after},
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    NotAuthorizedException: on_not_authorized,
    HTTPException: on_http_error,
    Exception: on_error,
}
