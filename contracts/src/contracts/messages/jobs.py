"""Generation jobs: the request a caller makes, the job's state, and its result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from contracts.messages.base import Record, Request

# `cancelling`: a cancel reached a running job; it is `cancelled` once ComfyUI stops (at its next node).
JobStatus = Literal["accepted", "queued", "running", "cancelling", "completed", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
CANCELLED_BY_CALLER = "cancelled by the caller"  # the one reason a caller's cancel records, whatever the job's state
# A job id names the job's subjects (its events, its place in the queue), so it is one plain subject token: no `.`,
# `*` or `>` that would widen a subject to other jobs' messages. The hub makes them (uuid hex); see streams.py.
JOB_ID_PATTERN = "^[A-Za-z0-9_-]+$"
GivenJobId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=40,
        pattern=JOB_ID_PATTERN,
        description="1 to 40 letters, digits, `_` or `-` (one subject token), e.g. a uuid4 hex",
    ),
]


class InputImage(Request):
    """An input image for img2img/upscale: a URL the hub fetches, the bytes as base64, or an image the hub has."""

    url: Annotated[str | None, msgspec.Meta(description="http(s) URL of the image")] = None
    base64: Annotated[str | None, msgspec.Meta(description="Base64 bytes (PNG, JPEG or WebP)")] = None
    stored_id: Annotated[
        str | None,
        msgspec.Meta(description="An image the hub stores: the output_id of an earlier generation (e.g. to upscale)"),
    ] = None
    filename: str | None = None


# What a generation request may ask; the registry's parameter_specs advertise these, clamped to a render type's own.
REQUEST_MAX_SEED = 2**63 - 1  # a signed 64-bit integer, which every client and database holds exactly
REQUEST_MIN_SIZE, REQUEST_MAX_SIZE = 64, 8192
REQUEST_MAX_STEPS = 200
REQUEST_MAX_CFG = 50.0
REQUEST_MAX_COUNT = 16


class GenerationRequest(Request):
    prompt: Annotated[
        str,
        msgspec.Meta(
            max_length=8000,
            description="What the image should show. Required by render types that take a prompt (their "
            "parameter_specs in list_render_types mark it required); omit it for those without a prompt slot "
            "(e.g. upscale, image filters).",
        ),
    ] = ""
    negative_prompt: Annotated[str, msgspec.Meta(max_length=8000, description="What the image must not show.")] = ""
    render_type: Annotated[
        str | None,
        msgspec.Meta(description="Render type name (see list_render_types); omit for the default."),
    ] = None
    styles: Annotated[
        list[str] | None,
        msgspec.Meta(description="Style names (see list_styles); omit for the default styles, [] for none."),
    ] = None
    enhance_prompt: Annotated[
        bool, msgspec.Meta(description="Let a local LLM rewrite the prompt with more detail first.")
    ] = False
    seed: Annotated[int, msgspec.Meta(ge=0, le=REQUEST_MAX_SEED, description="Omit for a random seed.")] | None = None
    width: (
        Annotated[int, msgspec.Meta(ge=REQUEST_MIN_SIZE, le=REQUEST_MAX_SIZE, description="Multiple of 8.")] | None
    ) = None
    height: (
        Annotated[int, msgspec.Meta(ge=REQUEST_MIN_SIZE, le=REQUEST_MAX_SIZE, description="Multiple of 8.")] | None
    ) = None
    steps: Annotated[int, msgspec.Meta(ge=1, le=REQUEST_MAX_STEPS)] | None = None
    cfg: Annotated[float, msgspec.Meta(ge=0, le=REQUEST_MAX_CFG)] | None = None
    count: Annotated[int, msgspec.Meta(ge=1, le=REQUEST_MAX_COUNT, description="How many images to make.")] = 1
    input_image: InputImage | None = None
    callback_url: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=2000,
                description="http(s) URL the hub POSTs the job's final state to, signed with the API key's webhook "
                "secret (README, Webhooks). Public hosts only, unless the admin allows others.",
            ),
        ]
        | None
    ) = None
    callback_progress: Annotated[
        bool,
        msgspec.Meta(
            description="Also POST each progress step to callback_url (best effort, in order; only the final "
            "state is retried)."
        ),
    ] = False
    # Filled by the gateway, not by the caller:
    api_key_id: str | None = None
    client_name: str | None = None
    max_waiting: int | None = None  # the key's limit of queued jobs, checked by the dispatcher as it accepts
    max_running: int | None = None  # the key's limit of jobs running at once, checked as the dispatcher starts one
    weight: int | None = None  # the key's fair-share weight (None: 1), used as the dispatcher picks the next job
    # Keep a JPEG rendition of each opaque image output (made by ComfyUI) for inline previews: the MCP door's jobs.
    inline_previews: bool = False
    # The key had webhook URLs when the job was submitted: its events are copied for the gateway's webhook consumer
    # (a job with a callback_url has them copied anyway; see wants_webhooks).
    key_webhooks: bool = False
    # The job id an idempotency key was given: a repeat answers the job made first (see gateway/idempotency.py).
    job_id: GivenJobId | None = None


def wants_webhooks(request: GenerationRequest | Mapping[str, object]) -> bool:
    """Whether a job's events are copied for its webhooks (contracts.streams.WEBHOOK_EVENTS_SUBJECTS): it has a
    callback_url, or its key had webhook URLs when it was submitted. `request` as submitted, or as a job's row keeps
    it (a dict)."""
    if isinstance(request, GenerationRequest):
        return request.callback_url is not None or request.key_webhooks
    return request.get("callback_url") is not None or request.get("key_webhooks") is True


class SubmitReply(Record):
    job_id: str
    status: JobStatus
    render_type: str = ""
    seed: int | None = None
    error: str | None = None  # set when the job failed at once (e.g. no instance can ever run it)


class OutputFile(Record):
    output_id: str  # unguessable; the gateway serves it at /images/<output_id>
    content_type: str
    size: int
    filename: str
    kind: Literal["image", "video", "audio", "other"] = "image"
    width: int | None = None
    height: int | None = None
    # When retention deleted the file (the gateway answers 404 for it from then on); None while it is kept.
    removed_at: float | None = None


class Timings(Record):
    accepted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # started_at and run_ms are those of the attempt that produced the result (a job run again after a crash or
    # on another instance started more than once); total_ms runs from acceptance to the end, every attempt included.
    queue_wait_ms: float | None = None
    run_ms: float | None = None
    total_ms: float | None = None


class Progress(Record):
    """How far a job has come. `percent` is the whole job (0-100, only grows, 100 once it completed); `value` of
    `max` are the steps of the node that ran last (a sampler's steps; 0 of 0 for a node without steps)."""

    value: int = 0
    max: int = 0
    node: str | None = None
    percent: float = 0.0


class JobHeading(Record):
    """The fields every account of a job starts with (the dispatcher's JobView, the stats service's
    GenerationRecord): which job, how far, and what was asked for."""

    job_id: str
    status: JobStatus
    render_type: str  # "" in a GenerationRecord until the job's `accepted` event has been recorded
    prompt: str  # what the caller asked for
    positive_prompt: str = ""  # the final prompts sent to ComfyUI (styles applied, maybe rewritten by the LLM)
    negative_prompt: str = ""
    styles: list[str] = []


class JobView(JobHeading):
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    instance: str | None = None
    attempts: int = 0
    failures: list[str] = []  # why earlier attempts ended ("<instance>: <reason>"), when the job was retried
    progress: Progress = msgspec.field(default_factory=Progress)
    queue_position: int | None = None
    # While waiting: the place among the waiting jobs of the same API key, and when the job should start
    # (epoch seconds, from the measured run times of recent jobs and the free instances' slots; None unmeasured).
    key_queue_position: int | None = None
    estimated_start_at: float | None = None
    outputs: list[OutputFile] = []
    timings: Timings = msgspec.field(default_factory=Timings)
    error: str | None = None
    enhancement_error: str | None = None
    api_key_id: str | None = None


class GetJob(Request):
    job_id: str


class CancelJob(Request):
    job_id: str
    reason: str = CANCELLED_BY_CALLER


class QueueViewRequest(Request):
    include_finished: bool = False
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class ListJobs(Request):
    """One page of the jobs one caller made, newest first (what MCP's tasks/list shows a key)."""

    api_key_id: Annotated[
        str | None, msgspec.Meta(description="The key whose jobs to list; omit for the jobs made without a key.")
    ] = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    after: Annotated[
        str | None, msgspec.Meta(description="The `next_after` of the previous page, to go on from there.")
    ] = None


class JobPage(Record):
    jobs: list[JobView]
    next_after: str | None = None  # set when older jobs follow


class QueueView(Record):
    jobs: list[JobView]
    queued: int
    running: int


class GetSchedulingView(Request):
    pass


class RunningJob(Record):
    job_id: str
    render_type: str
    api_key_id: str | None = None
    started_at: float | None = None


class InstanceWork(Record):
    """What one instance does now, from the job table (the jobs of every dispatcher replica) and the models bucket."""

    instance: str
    running: list[RunningJob] = []  # oldest first
    loaded_models: list[str] = []  # what it holds loaded, as far as the dispatchers know (hub-dispatch-models)
    started_recently: int = 0  # jobs started on it within the view's share_window_s
    share: float = 0.0  # its share of the jobs started on any instance within share_window_s (0..1)


class KeyWork(Record):
    """One API key's jobs now; its limits are the gateway's (the admin UI shows them side by side)."""

    api_key_id: str | None  # None: jobs made without a key (the admin UI's)
    running: int = 0  # cancelling included: they still hold a slot
    waiting: int = 0


class SchedulingView(Record):
    instances: list[InstanceWork]
    keys: list[KeyWork]  # the keys with jobs running or waiting
    share_window_s: float
    strategy: str = ""  # HUB_DISPATCH_STRATEGY of the answering replica
    fair_share: bool = False  # HUB_DISPATCH_FAIR_SHARE: a free slot goes to the key with the least recent service


class DeleteOutputs(Request):
    output_ids: list[str]
    # The jobs these outputs belong to: their views then mark each deleted (or already missing) output removed.
    job_ids: list[str] = []


class DeletedOutputs(Record):
    deleted: list[str]
    missing: list[str] = []
