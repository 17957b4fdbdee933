"""Reading the admin UI's forms: text boxes into the hub's messages, or a HubError naming the box to fix."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from litestar import Request

from contracts.errors import ErrorCode, HubError
from contracts.messages.instances import Instance
from contracts.messages.jobs import InputImage
from contracts.messages.keys import KeyLimits
from contracts.messages.render_types import ParameterMap, ParameterSpec, RenderDefaults, RenderTypeSummary, Slot
from contracts.messages.stats import RetentionPolicy
from contracts.messages.styles import LlmSettings, Style
from ui_service.pages import field_of, human_size

# The largest input image the dispatcher takes (dispatch_service.jobs.MAX_INPUT_IMAGE_BYTES), and the kinds it
# recognises by their first bytes.
MAX_INPUT_IMAGE_BYTES = 25 * 1024 * 1024
IMAGE_KINDS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF"}
DEFAULT_FIELDS = ("width", "height", "steps", "cfg", "batch_size", "denoise")
EDIT_FIELDS = {"name", "description", "enabled", "workflow", "parameter_map", "note", "negative_prompt"}


def invalid(message: str, field: str | None = None) -> HubError:
    return HubError(ErrorCode.INVALID_REQUEST, message, field=field)


async def form_of(request: Request, *leave_out: str) -> dict[str, str]:
    """The submitted form as text (uploads and multi-valued inputs named in `leave_out` are read apart)."""
    return {key: str(value) for key, value in (await request.form()).items() if key not in leave_out}


async def uploaded_text(upload: Any) -> str:
    """An uploaded file's text ("" when none was chosen)."""
    if upload is None or not hasattr(upload, "read"):
        return ""
    return (await upload.read()).decode("utf-8", errors="replace")


def lines(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


# -- instances, styles, prompt settings, retention ---------------------------------------------------------


def instance_from_form(form: dict[str, str]) -> Instance:
    try:
        return Instance(
            name=form.get("name", "").strip(),
            base_url=form.get("base_url", "").strip(),
            enabled=form.get("enabled") == "on",
            slots=int(form.get("slots") or 1),
            weight=int(form.get("weight") or 100),
            auth_header=form.get("auth_header") or None,
            tags=lines(form.get("tags", "")),
        )
    except (ValueError, TypeError) as exc:
        raise invalid(f"Check the numbers: {exc}") from None


def _limit_bounds(name: str) -> tuple[int | None, int | None]:
    """The range KeyLimits allows for one limit (from its msgspec constraints)."""
    info = msgspec.inspect.type_info(KeyLimits)
    assert isinstance(info, msgspec.inspect.StructType)
    field = next(f for f in info.fields if f.name == name)
    kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
    number = next(t for t in kinds if isinstance(t, msgspec.inspect.IntType))
    return number.ge, number.le


def limits_from_form(form: dict[str, str]) -> KeyLimits:
    """A key's limits (KeyLimits, every field a whole number); a blank box is no limit. A value out of range names
    its box and the range."""
    values: dict[str, int | None] = {}
    for name in KeyLimits.__struct_fields__:
        text = form.get(name, "").strip()
        low, high = _limit_bounds(name)
        blank = "blank for weight 1" if name == "weight" else "blank for no limit"  # KeyLimits: None is weight 1
        fix = f"a whole number from {low} to {high}, or {blank}"
        try:
            values[name] = int(text) if text else None
        except ValueError:
            raise invalid(f"`{name}` must be {fix} (got {text[:20]!r})", name) from None
        number = values[name]
        if number is not None and not ((low is None or number >= low) and (high is None or number <= high)):
            raise invalid(f"`{name}` must be {fix} (got {number})", name)
    return KeyLimits(**values)


def limits_form(limits: KeyLimits) -> dict[str, str]:
    """The boxes of a limits form filled with `limits` (blank: no limit)."""
    return {name: "" if value is None else str(value) for name, value in msgspec.structs.asdict(limits).items()}


def style_from_form(form: dict[str, str]) -> Style:
    try:
        return Style(
            name=form.get("name", "").strip(),
            positive=form.get("positive", ""),
            negative=form.get("negative", ""),
            category=form.get("category", "").strip(),
            render_types=lines(form.get("render_types", "")),
            is_default=form.get("is_default") == "on",
            enabled=form.get("enabled") == "on",
            description=form.get("description", ""),
        )
    except (ValueError, TypeError) as exc:
        raise invalid(str(exc)) from None


def llm_settings_from_form(form: dict[str, str], current: LlmSettings) -> LlmSettings:
    try:
        return msgspec.structs.replace(
            current,
            provider=form.get("provider", current.provider),
            base_url=form.get("base_url", "").strip(),
            model=form.get("model", "").strip(),
            system_prompt=form.get("system_prompt", ""),
            timeout_s=float(form.get("timeout_s") or current.timeout_s),
            temperature=float(form.get("temperature") or current.temperature),
            api_key=form.get("api_key") or None,
        )
    except ValueError:
        raise invalid("Timeout and temperature must be numbers.", "timeout_s") from None


def retention_from_form(form: dict[str, str]) -> RetentionPolicy:
    values: dict[str, Any] = {}
    for name, kind, unit in (
        ("keep_images_days", int, "whole days"),
        ("keep_log_days", int, "whole days"),
        ("run_every_hours", float, "hours"),
    ):
        try:
            values[name] = kind(form.get(name, "").strip() or 0)
        except ValueError:
            raise invalid(f"give a number of {unit}", name) from None
    return RetentionPolicy(**values)


# -- render types ---------------------------------------------------------------------------------------


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
            raise invalid(f"line {number} should read `parameter: node_id/input_name, ...`", "parameter_map")
        slots[name.strip()] = [Slot(node_id=node.strip(), input_name=field.strip()) for node, field in pairs]
    # The names are the user's text, sent as typed: the registry validates them when it decodes the request.
    return ParameterMap(slots=slots)  # type: ignore[arg-type]


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
            raise invalid(f"{name} must be {whole}", name) from None
    return RenderDefaults(**values)


def workflow_from_form(form: dict[str, str]) -> dict[str, Any]:
    try:
        workflow = msgspec.json.decode(form.get("workflow", "").encode())
    except msgspec.DecodeError as exc:
        raise invalid(f"the workflow is not valid JSON: {exc}", "workflow") from None
    if not isinstance(workflow, dict):
        raise invalid("the workflow must be a JSON object (ComfyUI's API format)", "workflow")
    return workflow


async def workflow_of(request: Request) -> dict[str, str]:
    """A render type form, its workflow box replaced by the uploaded workflow file when one was chosen."""
    data = await request.form()
    form = {key: str(value) for key, value in data.items() if key != "workflow_file"}
    if uploaded := await uploaded_text(data.get("workflow_file")):
        form["workflow"] = uploaded
    return form


def version_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise invalid("no such version") from None


def render_type_field(error: HubError, fields: set[str]) -> str:
    """The render type form's input a registry error names (`render_type.defaults.width` -> `width`);
    "form" when the form has no such input (the error then shows above the form)."""
    path = (error.info.field or "").removeprefix("render_type.").removeprefix("params.")
    head = path.split(".", 1)[0].split("[", 1)[0]
    if head in ("defaults", "limits"):
        head = path.rsplit(".", 1)[-1]
    head = {"workflow_json": "workflow", "is_default": "enabled", "original_name": "name"}.get(head, head)
    return head if head in fields else "form"


# -- test generation ------------------------------------------------------------------------------------


def number_of(form: dict[str, str], name: str, kind: type = int) -> Any:
    """A number box of the generation form (None when empty)."""
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise invalid(f"{name} must be a number", name) from None


def spec_of(render_type: RenderTypeSummary | None, name: str) -> ParameterSpec | None:
    return next((spec for spec in render_type.parameter_specs if spec.name == name), None) if render_type else None


def image_count(form: dict[str, str], render_type: RenderTypeSummary | None) -> int:
    """The images box: empty means one; otherwise within what the render type makes per job, or an error."""
    count = number_of(form, "count")
    if count is None:
        return 1
    spec = spec_of(render_type, "batch_size")
    name = render_type.name if render_type else "this render type"
    if spec is None and count != 1:
        raise invalid(f"{name} makes one image per job (its workflow has no batch size): give 1", "count")
    top = int(spec.maximum or 1) if spec else 1
    if not 1 <= count <= top:
        raise invalid(f"{name} makes 1 to {top} images per job; give a number in that range", "count")
    return count


def seed_of(form: dict[str, str], render_type: RenderTypeSummary | None) -> int | None:
    """The seed box: empty means a random seed (the one used is reported); otherwise 0 up to the largest seed."""
    seed = number_of(form, "seed")
    spec = spec_of(render_type, "seed")
    top = int(spec.maximum) if spec and spec.maximum is not None else None
    if seed is not None and (seed < 0 or (top is not None and seed > top)):
        raise invalid(f"the seed must be 0 or more, at most {top}; leave it empty for a random one", "seed")
    return seed


def image_kind(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in IMAGE_KINDS.items() if data.startswith(magic)), None)


def takes_input_image(render_type: RenderTypeSummary | None) -> bool:
    return render_type is not None and "input_image" in render_type.parameters


async def read_input_image(upload: Any, url: str, render_type: RenderTypeSummary | None) -> InputImage | None:
    """The form's input image (an uploaded file, or a URL the hub fetches), checked, or an error naming the field."""
    content = await upload.read() if upload is not None and hasattr(upload, "read") else b""
    filename = getattr(upload, "filename", None) or None
    if not content and not url:
        if takes_input_image(render_type):
            assert render_type is not None
            raise invalid(
                f"{render_type.name} starts from an input image: choose a file, or give the image's URL",
                "input_image_file",
            )
        return None
    field = "input_image_url" if url else "input_image_file"
    if content and url:
        raise invalid("choose a file or give a URL, not both", "input_image_file")
    if not takes_input_image(render_type):
        name = render_type.name if render_type else "the chosen render type"
        raise invalid(
            f"{name} takes no input image; pick a render type that does (such as img2img or upscale) or remove it",
            field,
        )
    if url:
        if not url.startswith(("http://", "https://")) or len(url) > 4096:
            raise invalid("the URL must start with http:// or https://", field)
        return InputImage(url=url)
    return InputImage(base64=base64.b64encode(checked_image(content, filename, field)).decode(), filename=filename)


def checked_image(content: bytes, filename: str | None, field: str) -> bytes:
    if len(content) > MAX_INPUT_IMAGE_BYTES:
        raise invalid(
            f"{filename or 'the file'} is {human_size(len(content))}; the hub takes input images up to "
            f"{human_size(MAX_INPUT_IMAGE_BYTES)}. Scale it down first (a URL has the same limit).",
            field,
        )
    if image_kind(content) is None:
        raise invalid(f"{filename or 'the file'} is not a PNG, JPEG, WebP or GIF image", field)
    return content


def generation_field(error: HubError) -> str:
    """The test generation form's input a HubError names (the input image's errors go beside its field)."""
    field = error.info.field or ""
    if "input_image" in field:
        return "input_image_url" if field.endswith(".url") or field == "input_image_url" else "input_image_file"
    return field_of(error) or "form"
