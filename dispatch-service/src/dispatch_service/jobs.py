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
from typing import Any, Protocol

import msgspec
from piccolo.columns import Column

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import (
    FINAL_STATUSES,
    GenerationRequest,
    InputImage,
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
from contracts.runtime.storage import OutputStorage, decode_base64_image
from dispatch_service.input_url import PUBLIC_ONLY, UrlAllowlist, fetch_input_url
from dispatch_service.tables import JobRow

MAX_INPUT_IMAGE_BYTES = 25 * 1024 * 1024
WAITING_STATUSES = ("accepted", "queued")  # not yet running: they have a place in the queue
ACTIVE_STATUSES = (*WAITING_STATUSES, "running", "cancelling")
RUNNING_STATUSES = ("running", "cancelling")  # on an instance (a cancel may be landing)


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
    job_id = new_job_id()
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
            params=GenerationParams(
                prompt=built.positive,
                negative_prompt=built.negative,
                seed=request.seed,
                width=request.width,
                height=request.height,
                steps=request.steps,
                cfg=request.cfg,
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


def _request_for_record(request: GenerationRequest) -> dict[str, Any]:
    """The request as stored and published: input image bytes are kept in storage, not in every copy."""
    raw = msgspec.to_builtins(request)
    if request.input_image is not None and request.input_image.base64:
        raw["input_image"] = {"base64": f"<{len(request.input_image.base64)} base64 characters>"}
    return raw


class JobStore:
    """Job rows: the only place that writes them."""

    async def insert(self, job: PreparedJob) -> None:
        params = job.resolved.params
        await JobRow.insert(
            JobRow(
                job_id=job.job_id,
                status="accepted",
                render_type=job.resolved.render_type,
                render_type_version=job.resolved.version,
                output_kind=job.resolved.output_kind,
                request=_request_for_record(job.request),
                workflow=job.resolved.workflow,
                requirements=msgspec.to_builtins(job.resolved.requirements),
                positive_prompt=job.built.positive,
                negative_prompt=job.built.negative,
                styles=job.built.styles_applied,
                enhancement_error=job.built.enhancement_error,
                seed=str(params.seed) if params.seed is not None else None,
                width=params.width,
                height=params.height,
                input_image_id=job.input_image_id,
                api_key_id=job.request.api_key_id,
                client_name=job.request.client_name,
                accepted_at=job.accepted_at,
            )
        ).run()

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await JobRow.select().where(JobRow.job_id == job_id).first().output(load_json=True).run()

    async def require(self, job_id: str) -> dict[str, Any]:
        row = await self.get(job_id)
        if row is None:
            raise HubError(ErrorCode.NOT_FOUND, f"no job with id {job_id!r}", field="job_id")
        return row

    async def transition(self, job_id: str, from_statuses: tuple[str, ...], **values: Any) -> bool:
        """Update the job only if it is in one of `from_statuses`; False if it was not (e.g. cancelled)."""
        changes: dict[Column | str, Any] = {getattr(JobRow, name): value for name, value in values.items()}
        updated = (
            await JobRow.update(changes)
            .where((JobRow.job_id == job_id) & JobRow.status.is_in(list(from_statuses)))
            .returning(JobRow.id)
            .run()
        )
        return bool(updated)

    async def claim(self, job_id: str, stream_seq: int, **values: Any) -> bool:
        """Take the job to run it from stream message `stream_seq`: a waiting job, or a running one whose
        runner died (the same message delivered again). A second message for the same job never claims it."""
        changes: dict[Column | str, Any] = {getattr(JobRow, name): value for name, value in values.items()}
        changes[JobRow.stream_seq] = stream_seq
        waiting = JobRow.status.is_in(list(WAITING_STATUSES))
        taken_over = (JobRow.status == "running") & (JobRow.stream_seq == stream_seq)
        updated = (
            await JobRow.update(changes)
            .where((JobRow.job_id == job_id) & (waiting | taken_over))
            .returning(JobRow.id)
            .run()
        )
        return bool(updated)

    async def set(self, job_id: str, **values: Any) -> None:
        await (
            JobRow.update({getattr(JobRow, name): value for name, value in values.items()})
            .where(JobRow.job_id == job_id)
            .run()
        )

    async def mark_outputs_removed(self, job_ids: list[str], gone: set[str], at: float) -> None:
        """Stamp `removed_at` on the outputs in `gone` of these jobs (a job's other outputs stay as they are)."""
        rows = (
            await JobRow.select(JobRow.job_id, JobRow.outputs)
            .where(JobRow.job_id.is_in(job_ids))
            .output(load_json=True)
        )
        for row in rows:
            outputs = row["outputs"] or []
            marked = [{**o, "removed_at": o.get("removed_at") or at} if o["output_id"] in gone else o for o in outputs]
            if marked != outputs:
                await JobRow.update({JobRow.outputs: marked}).where(JobRow.job_id == row["job_id"])

    async def active(self, limit: int) -> list[dict[str, Any]]:
        return (
            await JobRow.select()
            .where(JobRow.status.is_in(list(ACTIVE_STATUSES)))
            .order_by(JobRow.accepted_at)
            .limit(limit)
            .output(load_json=True)
            .run()
        )

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        return (
            await JobRow.select()
            .order_by(JobRow.accepted_at, ascending=False)
            .limit(limit)
            .output(load_json=True)
            .run()
        )

    async def queue_position(self, row: dict[str, Any]) -> int:
        """Where a waiting job stands: 1 + the waiting jobs accepted before it (counted, not loaded)."""
        waiting = JobRow.status.is_in(list(WAITING_STATUSES))
        same_time = (JobRow.accepted_at == row["accepted_at"]) & (JobRow.id < row["id"])
        earlier = (JobRow.accepted_at < row["accepted_at"]) | same_time
        return await JobRow.count().where(waiting & earlier).run() + 1

    async def of_caller(
        self, api_key_id: str | None, limit: int, after: tuple[float, str] | None
    ) -> list[dict[str, Any]]:
        """A caller's jobs, newest first, from just after `after` = (accepted_at, job_id) of the last one seen."""
        mine = JobRow.api_key_id.is_null() if api_key_id is None else JobRow.api_key_id == api_key_id
        if after is not None:
            accepted_at, job_id = after
            older = (JobRow.accepted_at < accepted_at) | (
                (JobRow.accepted_at == accepted_at) & (JobRow.job_id < job_id)
            )
            mine = mine & older
        return (
            await JobRow.select()
            .where(mine)
            .order_by(JobRow.accepted_at, JobRow.job_id, ascending=False)
            .limit(limit)
            .output(load_json=True)
            .run()
        )

    async def unqueued(self) -> list[str]:
        rows = await JobRow.select(JobRow.job_id).where(JobRow.status == "accepted").run()
        return [row["job_id"] for row in rows]


def requirements_of(row: dict[str, Any]) -> Requirements:
    return msgspec.convert(row["requirements"], type=Requirements)


def outputs_of(row: dict[str, Any]) -> list[OutputFile]:
    return msgspec.convert(row["outputs"] or [], type=list[OutputFile])


def timings_of(row: dict[str, Any], now: float | None = None) -> Timings:
    started, finished, accepted = row["started_at"], row["finished_at"], row["accepted_at"]
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


def progress_of(row: dict[str, Any]) -> Progress:
    """The row's progress; a completed job's is its end (the row is written at most every 0.5 s while it runs,
    so its last write is older than the end)."""
    value, maximum = row["progress_value"], row["progress_max"]
    if row["status"] == "completed":
        return Progress(value=maximum, max=maximum, percent=100.0)
    return Progress(value=value, max=maximum, percent=row.get("progress_percent") or 0.0)


def job_view(row: dict[str, Any], queue_position: int | None = None) -> JobView:
    request = row["request"] or {}
    return JobView(
        job_id=row["job_id"],
        status=row["status"],
        render_type=row["render_type"],
        prompt=request.get("prompt", ""),
        positive_prompt=row["positive_prompt"],
        negative_prompt=row["negative_prompt"],
        styles=list(row["styles"] or []),
        seed=int(row["seed"]) if row["seed"] is not None else None,
        width=row["width"],
        height=row["height"],
        instance=row["instance"],
        attempts=row["attempts"],
        failures=[f"{f['instance']}: {f['reason']}" for f in row["failures"] or []],
        progress=progress_of(row),
        queue_position=queue_position,
        outputs=outputs_of(row),
        timings=timings_of(row),
        error=row["error"],
        enhancement_error=row["enhancement_error"],
        api_key_id=row["api_key_id"],
    )


def is_final(row: dict[str, Any]) -> bool:
    return row["status"] in FINAL_STATUSES
