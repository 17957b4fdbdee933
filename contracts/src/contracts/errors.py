"""The one error envelope used by every reply, and the exception that carries it inside a service."""

from __future__ import annotations

import enum
import re

import msgspec
import msgspec.inspect


class ErrorCode(enum.StrEnum):
    """Machine-readable error classes. Callers branch on these, people read `message`."""

    INVALID_REQUEST = "invalid_request"  # the request does not match its contract (field names the culprit)
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # e.g. a name that already exists, a stale version
    INCOMPATIBLE = "incompatible"  # e.g. a style not suited to the render type
    UNAVAILABLE = "unavailable"  # a dependency (another service, ComfyUI, Ollama) cannot be reached
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"  # the caller is known but may not do this (e.g. cancel a job another key made)
    LIMIT_EXCEEDED = "limit_exceeded"  # a limit of the caller's key; `details` name it and when to retry
    INTERNAL = "internal"  # a bug: the service logged the details under `ref`


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What went wrong, which field caused it (when one did) and how to fix it, in plain words."""

    code: ErrorCode
    message: str
    field: str | None = None
    # Valid choices or limits a caller can act on (e.g. the names of the existing styles).
    details: dict[str, object] | None = None
    # Correlates a reply with the service log line for internal errors; never a stack trace.
    ref: str | None = None


class HubError(Exception):
    """Raised by domain code; the runtime turns it into an `ErrorInfo` reply."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, object] | None = None,
        ref: str | None = None,
    ) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, field=field, details=details, ref=ref)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> HubError:
        return cls(info.code, info.message, field=info.field, details=info.details, ref=info.ref)

    @property
    def code(self) -> ErrorCode:
        return self.info.code

    def __str__(self) -> str:
        where = f" (field `{self.info.field}`)" if self.info.field else ""
        return f"{self.info.code}: {self.info.message}{where}"


_PATH_IN_MESSAGE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")


def field_rule(request_type: type, path: str) -> str:
    """The description a text field with a pattern or a length limit declares (its rule in words), or ""."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(request_type)
    description = ""
    for part in path.split("."):
        info, description = _unwrapped(info)
        if not isinstance(info, msgspec.inspect.StructType):
            return ""
        found = next((f for f in info.fields if f.encode_name == part), None)
        if found is None:
            return ""
        info = found.type
    info, description = _unwrapped(info)
    worded = isinstance(info, msgspec.inspect.StrType) and (info.pattern or info.min_length or info.max_length)
    return description if worded else ""


def _breaks_text_rule(text: str) -> bool:
    """msgspec's words for a string that has the right type but not the pattern or length its field demands."""
    return text.startswith("Expected `str` matching regex") or text.startswith("Expected `str` of length")


def _unwrapped(info: msgspec.inspect.Type) -> tuple[msgspec.inspect.Type, str]:
    """A type without its Annotated metadata and its `| None`, with the description the metadata gives."""
    description = ""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            description = (info.extra_json_schema or {}).get("description", description)
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType) and len(info.types) == 2 and info.includes_none:
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        else:
            return info, description


def error_from_validation(
    exc: msgspec.ValidationError | msgspec.DecodeError, subject: str, request_type: type | None = None
) -> ErrorInfo:
    """Turn a msgspec decoding failure into an error that names the field and says how to fix it.

    msgspec reports e.g. "Expected `int`, got `str` - at `$.width`"; the path becomes `field` ("width").
    """
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return ErrorInfo(
            code=ErrorCode.INVALID_REQUEST,
            message=f"the request body is not valid JSON ({text}); send a JSON object as described for {subject}",
        )
    match = _PATH_IN_MESSAGE.search(text)
    path = ""
    if match:
        path = match.group("path").lstrip(".")
        text = text[: match.start()]
    named = _NAMED_FIELD.search(text)
    if named:  # "Object contains unknown field `x`" names the field inside the object at `path`
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    field = path or None
    details: dict[str, object] | None = None
    if "unknown field" in text and not match and request_type is not None:
        accepted = sorted(f.encode_name for f in msgspec.structs.fields(request_type))
        details = {"accepted_fields": accepted}
        message = f"unknown field `{field}`; accepted fields are: {', '.join(accepted)}"
    elif "missing required field" in text and field:
        message = f"`{field}` is required"
    elif field and request_type is not None and _breaks_text_rule(text) and (rule := field_rule(request_type, field)):
        # "Expected `str` matching regex '^[a-z0-9]...'" tells no admin what to type; the field's own rule does.
        message = f"invalid value for `{field}`: {rule}"
    elif field:
        message = f"invalid value for `{field}`: {text}"
    else:
        message = f"invalid request for {subject}: {text}"
    return ErrorInfo(code=ErrorCode.INVALID_REQUEST, message=message, field=field, details=details)
