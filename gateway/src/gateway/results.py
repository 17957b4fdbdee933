"""What the gateway returns about a generation, to MCP and REST callers alike."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.messages.base import Record, Request, struct_from
from contracts.messages.jobs import JobStatus, JobView, OutputFile, Progress, Timings
from contracts.messages.keys import WebhookDelivery


class ImageLink(Record):
    output_id: str
    url: Annotated[
        str | None,
        msgspec.Meta(
            description="Full image on the gateway; also readable with resources/read. Null once retention removed "
            "the image (see removed_at)."
        ),
    ]
    content_type: str
    size: int
    filename: str
    width: int | None = None
    height: int | None = None
    removed: Annotated[bool, msgspec.Meta(description="True when retention deleted the image file.")] = False
    removed_at: Annotated[
        float | None, msgspec.Meta(description="When retention deleted the image file (Unix time); null while kept.")
    ] = None


class Generation(Record):
    job_id: Annotated[str, msgspec.Meta(description="Pass to get_generation or cancel_generation.")]
    status: JobStatus
    done: Annotated[bool, msgspec.Meta(description="False: call get_generation with job_id to follow the job.")]
    render_type: str
    prompt: str
    positive_prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    instance: str | None = None
    queue_position: int | None = None
    key_queue_position: int | None = None  # the place among this API key's own waiting jobs
    estimated_start_at: float | None = None  # epoch seconds, from measured run times; None before any was measured
    progress: Progress = msgspec.field(default_factory=Progress)
    images: list[ImageLink] = []
    timings: Timings = msgspec.field(default_factory=Timings)
    error: str | None = None
    enhancement_error: str | None = None
    webhooks: list[WebhookDelivery] = []  # REST only: its callback_url's and its API key's webhook deliveries


def image_link(output: OutputFile, base_url: str) -> ImageLink:
    removed = output.removed_at is not None
    return struct_from(
        ImageLink, output, url=None if removed else f"{base_url}/images/{output.output_id}", removed=removed
    )


def generation_of(view: JobView, base_url: str) -> Generation:
    return struct_from(
        Generation,
        view,
        done=view.status in ("completed", "failed", "cancelled"),
        images=[image_link(o, base_url) for o in view.outputs],
    )


class JobRef(Request):
    job_id: Annotated[str, msgspec.Meta(min_length=1, description="The job_id returned by generate_image.")]


class StylesQuery(Request):
    render_type: Annotated[str | None, msgspec.Meta(description="Only styles suited to this render type.")] = None


class NoArguments(Request):
    pass
