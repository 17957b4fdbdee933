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
    """A node's progress (e.g. sampler steps): at most one event every 0.1 s a job, but always each node's first
    and last step, so a fast sampler does not flood the stream."""

    value: int
    max: int
    node: str | None = None


class OutputStored(_Event, tag="output_stored"):
    output: OutputFile


class JobRetrying(_Event, tag="retrying"):
    attempt: int
    reason: str


class JobCompleted(_Event, tag="completed"):
    outputs: list[OutputFile]
    timings: Timings


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
