"""Jobs: accepting a generation request, recording it, and the job's state from accepted to final.

The request is turned into a runnable job here: the render type is resolved (registry), the prompt built
(prompt service), an input image fetched and stored. The job row is written before the job is put on the
JetStream job stream, and a row still `accepted` at start-up is put on the stream again (de-duplicated by
job id), so an accepted job is never lost between the two.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Protocol, cast

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.base import struct_from
from contracts.messages.jobs import (
    FINAL_STATUSES,
    GenerationRequest,
    InputImage,
    JobStatus,
    JobView,
    OutputFile,
    Progress,
    Timings,
)
from contracts.messages.render_types import (
    GenerationParams,
    RenderTypeList,
    Requirements,
    ResolvedWorkflow,
    ResolveRenderType,
)
from contracts.messages.styles import BuildPrompt, BuiltPrompt, TraceStep
from contracts.runtime.images import checked_image_type
from contracts.runtime.outbound_url import PUBLIC_ONLY, UrlAllowlist
from contracts.runtime.storage import OutputStorage, decode_base64_image
from dispatch_service.input_url import fetch_input_url
from dispatch_service.store import JobRecord

MAX_INPUT_IMAGE_BYTES = 25 * 1024 * 1024


class Upstream(Protocol):
    """What the dispatcher asks of the other services (over NATS in production)."""

    async def list_render_types(self) -> RenderTypeList: ...
    async def resolve(self, request: ResolveRenderType) -> ResolvedWorkflow: ...
    async def build_prompt(self, request: BuildPrompt) -> BuiltPrompt: ...


def new_job_id() -> str:
    return uuid.uuid4().hex


async def read_input_image(
    image: InputImage, storage: OutputStorage, allow: UrlAllowlist = PUBLIC_ONLY
) -> tuple[bytes, str]:
    """The bytes and content type of an input image given as a URL, base64 or a stored image, or a clear error."""
    if sum(1 for given in (image.url, image.base64, image.stored_id) if given) != 1:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            "give the input image as exactly one of `url`, `base64` or `stored_id`",
            field="input_image",
        )
    if image.base64:
        where = "input_image.base64"
        data = decode_base64_image(image.base64, where)
    elif image.stored_id:
        where = "input_image.stored_id"
        data = await _read_stored(storage, image.stored_id)
    else:
        assert image.url is not None
        if not image.url.startswith(("http://", "https://")):
            raise HubError(ErrorCode.INVALID_REQUEST, "input_image.url must be an http(s) URL", field="input_image.url")
        data = await fetch_input_url(image.url, allow, MAX_INPUT_IMAGE_BYTES)
        where = "input_image.url"
    if len(data) > MAX_INPUT_IMAGE_BYTES:
        raise HubError(ErrorCode.INVALID_REQUEST, f"{where}: the image is larger than 25 MiB", field=where)
    return data, await asyncio.to_thread(checked_image_type, data, where)


async def _read_stored(storage: OutputStorage, stored_id: str) -> bytes:
    where = "input_image.stored_id"
    info = await storage.info(stored_id)
    if info is None:
        raise HubError(
            ErrorCode.NOT_FOUND,
            f"{where}: the hub stores no image {stored_id!r} (a typo, or removed by the retention policy?)",
            field=where,
        )
    if info.size > MAX_INPUT_IMAGE_BYTES:
        raise HubError(ErrorCode.INVALID_REQUEST, f"{where}: the image is larger than 25 MiB", field=where)
    return b"".join([chunk async for chunk in storage.read(stored_id)])


async def default_render_type(upstream: Upstream) -> str:
    listing = await upstream.list_render_types()
    for summary in listing.render_types:
        if summary.is_default and summary.enabled:
            return summary.name
    raise HubError(
        ErrorCode.NOT_FOUND,
        "no default render type is set; name one in `render_type` or set a default in the admin UI",
        field="render_type",
        details={"valid": [s.name for s in listing.render_types if s.enabled]},
    )


class PreparedJob(msgspec.Struct, kw_only=True):
    job_id: str
    request: GenerationRequest
    resolved: ResolvedWorkflow
    built: BuiltPrompt
    input_image_id: str | None
    accepted_at: float


async def build_prompt(request: GenerationRequest, render_type: str, upstream: Upstream) -> BuiltPrompt:
    """The final prompts (styles, LLM); a blank prompt stays blank: styles alone are no prompt, and a render type
    without a prompt slot (an upscale, a filter) takes none. `require_prompt` refuses it where one is needed."""
    if not request.prompt.strip():
        return BuiltPrompt(
            positive="",
            negative=request.negative_prompt,
            styles_applied=[],
            enhanced=False,
            trace=[TraceStep(step="no_prompt", detail="no prompt given: no style or LLM rewrite applied")],
            render_type=render_type,
        )
    return await upstream.build_prompt(
        BuildPrompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            styles=request.styles,
            render_type=render_type,
            enhance=request.enhance_prompt,
        )
    )


def require_prompt(request: GenerationRequest, resolved: ResolvedWorkflow) -> None:
    """A render type with a prompt slot needs a prompt; only one without may be asked for with none."""
    if not request.prompt.strip() and resolved.parameter_map.slots.get("prompt"):
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"the prompt is blank; render type {resolved.render_type!r} takes a prompt: describe the image",
            field="prompt",
        )


async def prepare_job(
    request: GenerationRequest, upstream: Upstream, storage: OutputStorage, allow: UrlAllowlist = PUBLIC_ONLY
) -> PreparedJob:
    """Everything that can be checked before the job is queued: a bad request fails here, clearly."""
    job_id = request.job_id or new_job_id()
    accepted_at = time.time()
    render_type = request.render_type or await default_render_type(upstream)
    built = await build_prompt(request, render_type, upstream)
    input_image_id: str | None = None
    input_name: str | None = None
    if request.input_image is not None:
        data, content_type = await read_input_image(request.input_image, storage, allow)
        extension = content_type.split("/")[1].replace("jpeg", "jpg")
        stored = await storage.save(
            io.BytesIO(data), filename=f"{job_id}.{extension}", content_type=content_type, job_id=job_id
        )
        input_image_id = stored.output_id
        input_name = f"hub/{job_id}.{extension}"  # the name it gets on the instance (see runner upload)
    resolved = await upstream.resolve(
        ResolveRenderType(
            render_type=render_type,
            params=struct_from(  # seed, size, steps and cfg as asked
                GenerationParams,
                request,
                prompt=built.positive,
                negative_prompt=built.negative,
                batch_size=request.count if request.count > 1 else None,
                input_image=input_name,
            ),
        )
    )
    try:
        require_prompt(request, resolved)
    except HubError:
        if input_image_id is not None:
            await storage.delete(input_image_id)
        raise
    if not resolved.parameter_map.slots.get("negative_prompt"):
        # A workflow without a negative prompt (flux-style guidance) gets none: the job reports none either, not
        # the styles' negative text that never reached ComfyUI.
        built = msgspec.structs.replace(built, negative="")
    return PreparedJob(
        job_id=job_id,
        request=request,
        resolved=resolved,
        built=built,
        input_image_id=input_image_id,
        accepted_at=accepted_at,
    )


def requirements_of(job: JobRecord) -> Requirements:
    return job.requirements


def outputs_of(job: JobRecord) -> list[OutputFile]:
    return job.outputs


def timings_of(job: JobRecord, now: float | None = None) -> Timings:
    started, finished, accepted = job.started_at, job.finished_at, job.accepted_at
    now = time.time() if now is None else now
    queue_wait_ms = ((started or finished or now) - accepted) * 1000 if accepted else None
    run_ms = ((finished or now) - started) * 1000 if started else None
    total_ms = ((finished or now) - accepted) * 1000 if accepted else None
    return Timings(
        accepted_at=accepted,
        started_at=started,
        finished_at=finished,
        queue_wait_ms=round(queue_wait_ms, 2) if queue_wait_ms is not None else None,
        run_ms=round(run_ms, 2) if run_ms is not None else None,
        total_ms=round(total_ms, 2) if total_ms is not None else None,
    )


def progress_of(job: JobRecord) -> Progress:
    """The job's progress; a completed job's is its end (the row is written at most every 0.5 s while it runs,
    so its last write is older than the end)."""
    if job.status == "completed":
        return Progress(value=job.progress_max, max=job.progress_max, percent=100.0)
    return Progress(value=job.progress_value, max=job.progress_max, percent=job.progress_percent or 0.0)


def job_view(job: JobRecord, queue_position: int | None = None) -> JobView:
    return JobView(
        job_id=job.job_id,
        status=cast(JobStatus, job.status),  # the store writes only JobStatus values
        render_type=job.render_type,
        prompt=job.request.get("prompt", ""),
        positive_prompt=job.positive_prompt,
        negative_prompt=job.negative_prompt,
        styles=list(job.styles),
        seed=int(job.seed) if job.seed is not None else None,
        width=job.width,
        height=job.height,
        instance=job.instance,
        attempts=job.attempts,
        failures=[f"{f.instance}: {f.reason}" for f in job.failures],
        progress=progress_of(job),
        queue_position=queue_position,
        outputs=outputs_of(job),
        timings=timings_of(job),
        error=job.error,
        enhancement_error=job.enhancement_error,
        api_key_id=job.api_key_id,
    )


def is_final(job: JobRecord) -> bool:
    return job.status in FINAL_STATUSES
