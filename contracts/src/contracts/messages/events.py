"""Generation events, published on JetStream for every step of every job.

Each event carries `version` (bump it on an incompatible change), a per-job `seq` so consumers can
order and de-duplicate (`event_id` = "<job_id>:<seq>"), the job id, the instance and a timestamp.
"""

from __future__ import annotations

import msgspec

from contracts.messages.jobs import GenerationRequest, OutputFile, Timings

EVENT_VERSION = 1


class _Event(msgspec.Struct, kw_only=True, tag_field="kind"):
    version: int = EVENT_VERSION
    job_id: str
    seq: int
    at: float  # epoch seconds
    instance: str | None = None

    @property
    def event_id(self) -> str:
        return f"{self.job_id}:{self.seq}"


class JobAccepted(_Event, tag="accepted"):
    request: GenerationRequest
    render_type: str
    positive_prompt: str
    negative_prompt: str
    styles: list[str]
    seed: int | None  # None: the render type has no seed slot
    width: int | None = None
    height: int | None = None
    enhancement_error: str | None = None


class JobQueued(_Event, tag="queued"):
    position: int | None = None


class JobStarted(_Event, tag="started"):
    attempt: int
    comfy_prompt_id: str


class JobProgress(_Event, tag="progress"):
    """How far a running job has come, for every workflow (sampler or not).

    `percent` is the whole job: nodes done of `nodes_total` to run (cached ones count as done) plus the running
    node's share of its steps; it only grows within an attempt and is 100 only once ComfyUI reports success.
    `value` of `max` are the steps of the running `node` (0 of 0 for a node without steps, e.g. an upscale).
    Sent from the job's start: at most one every 0.1 s, a change not sent at once follows within 0.1 s, and a
    heartbeat re-sends the current progress when nothing was sent for 1 s (the first within 0.4 s of the start),
    so a single slow node still ticks. A heartbeat may repeat the previous event's values.
    """

    value: int
    max: int
    node: str | None = None
    percent: float = 0.0
    nodes_done: int = 0
    nodes_total: int = 0


class OutputStored(_Event, tag="output_stored"):
    output: OutputFile


class JobRetrying(_Event, tag="retrying"):
    attempt: int
    reason: str


class JobCompleted(_Event, tag="completed"):
    outputs: list[OutputFile]
    timings: Timings
    # The time the job spent loading models its instance did not hold (the loader nodes ComfyUI ran, measured from
    # its WebSocket messages; 0 when unmeasured); None: it loaded none, its models were held (model affinity).
    model_switch_ms: float | None = None


class JobFailed(_Event, tag="failed"):
    error: str
    timings: Timings


class JobCancelled(_Event, tag="cancelled"):
    reason: str
    timings: Timings


GenerationEvent = (
    JobAccepted
    | JobQueued
    | JobStarted
    | JobProgress
    | OutputStored
    | JobRetrying
    | JobCompleted
    | JobFailed
    | JobCancelled
)
