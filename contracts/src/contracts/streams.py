"""JetStream streams, buckets and the subjects published into them.

Services create what they use at start (idempotently) from these definitions, so the names and limits
live in one place. `replicas` comes from configuration: 1 on one machine, 3 on a NATS cluster.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from contracts.messages.jobs import JOB_ID_PATTERN

# Generation events: every step of every job, for callers (progress), the stats service (log) and others.
EVENTS_STREAM: Final = "HUB_EVENTS"
EVENTS_SUBJECTS: Final = "hub.events.generation.>"
# Copies of the events webhooks need (accepted, progress, the final one) of the jobs that have webhooks (a
# callback_url, or an API key with webhook URLs), in the same stream: the gateway's webhook consumer reads only
# these, so a job without webhooks costs it nothing (it read, decoded and acknowledged every event of every job).
WEBHOOK_EVENTS_SUBJECTS: Final = "hub.events.webhook.>"

# Accepted jobs waiting for (or held by) a ComfyUI instance: a work queue, one message per job.
JOBS_STREAM: Final = "HUB_JOBS"
JOBS_SUBJECTS: Final = "hub.jobs.>"

# Generated files (images, videos), addressed by unguessable ids.
OUTPUTS_BUCKET: Final = "hub-outputs"

# JPEG renditions of image outputs for inline previews (contracts.runtime.storage.PreviewStore): needed while a
# caller waits for or polls its job, so kept ten minutes; a bounded cache (~3-6k renditions of 1024 px images, so
# ~5-10 a second sustained), not a record: past the bound a new one is refused and the gateway previews from the
# output itself.
PREVIEWS_BUCKET: Final = "hub-previews"
PREVIEWS_KEPT_S: Final = 600.0
PREVIEWS_MAX_BYTES: Final = 512 * 1024**2


_JOB_ID = re.compile(JOB_ID_PATTERN)
JOB_ID_MAX_LENGTH: Final = 128  # the longest a stored job id may be (the hub's own are 32 characters)


def is_job_id(value: str) -> bool:
    """Whether `value` can be a job id: one plain subject token (see JOB_ID_PATTERN), at most JOB_ID_MAX_LENGTH."""
    return len(value) <= JOB_ID_MAX_LENGTH and _JOB_ID.match(value) is not None


def event_subject(job_id: str) -> str:
    """`hub.events.generation.<job_id>`: every event of a job on one subject (the kind is in the payload), the
    filter to read or follow one job. One subject per job, not per event: nats-server keeps an in-memory index
    entry for each subject a stream holds (~0.5 KiB of RSS each, measured by bench/nats_memory.py).

    Raises ValueError for an id that is not one (`*` would read or follow every job's events): a caller that got the
    id from outside checks it first (`is_job_id`), as GenerationRequest's pattern does at the door."""
    if not is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id[:80]!r} (letters, digits, `_` and `-` only)")
    return f"hub.events.generation.{job_id}"


def webhook_event_subject(job_id: str) -> str:
    """`hub.events.webhook.<job_id>`: the copies of a job's events for its webhooks (see WEBHOOK_EVENTS_SUBJECTS).
    Raises ValueError for an id that is not one, as event_subject does."""
    return event_subject(job_id).replace(".generation.", ".webhook.", 1)


def job_of_event_subject(subject: str) -> str:
    """The job id in `hub.events.generation.<job_id>` (or its webhook copy's `hub.events.webhook.<job_id>`)."""
    return subject.split(".")[3]


def job_subject(job_id: str) -> str:
    """A job without an API key (the admin UI's, a NATS client's)."""
    return f"hub.jobs.pending.{job_id}"


def key_job_subject(key_token: str, job_id: str) -> str:
    """`hub.jobs.key.<key token>.<job_id>`: a job of an API key. Each key's jobs have a consumer of their own, so the
    dispatcher takes the next job of whichever key fair share picks (dispatch_service/fair_share.py)."""
    return f"hub.jobs.key.{key_token}.{job_id}"


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A stream's definition. Every limit is explicit (README, "NATS: streams and limits", says why each is what it
    is): nats-server keeps an index entry in memory for each subject a stream holds, so a stream without limits
    grows the server's memory, not only its disk."""

    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits" or "workqueue" (nats.js.api.RetentionPolicy values)
    max_age_s: float  # 0 = no limit
    max_msgs: int  # -1 = no limit
    max_bytes: int  # -1 = no limit
    discard: str  # "old" (drop the oldest messages) or "new" (refuse the publish) when a limit is reached
    duplicate_window_s: float  # a publish with a Nats-Msg-Id seen this recently is dropped as a repeat
    description: str


EVENTS: Final = StreamSpec(
    name=EVENTS_STREAM,
    subjects=(EVENTS_SUBJECTS, WEBHOOK_EVENTS_SUBJECTS),  # the first is what a consumer reads unless it says
    retention="limits",
    max_age_s=14 * 24 * 3600,  # consumers that were down for up to two weeks still catch up
    # ~6 events and ~3 KiB a job (bench/nats_memory.py): at least ~100k jobs, far more than two weeks hold at the
    # rates the hub serves; past that the oldest events go, as with the age limit.
    max_msgs=1_000_000,
    max_bytes=1024**3,
    discard="old",
    duplicate_window_s=120,  # longer than a publish's retries (publish_durably: 30 s) with room to spare
    description="Generation events (accepted ... completed/failed/cancelled) of every job",
)

JOBS: Final = StreamSpec(
    name=JOBS_STREAM,
    subjects=(JOBS_SUBJECTS,),
    retention="workqueue",
    max_age_s=0,  # a waiting job never expires: it waits until an instance can run it (or is cancelled)
    # One message (~100 bytes) per waiting job, removed when the job ends. A backlog past this is refused at
    # submit with a clear error, never dropped.
    max_msgs=100_000,
    max_bytes=64 * 1024**2,
    discard="new",
    duplicate_window_s=120,  # a job queued twice (a restart between storing and queueing it) is stored once
    description="Accepted generation jobs waiting for a ComfyUI instance",
)

ALL_STREAMS: Final = (EVENTS, JOBS)


class BucketSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A JetStream key-value bucket (or the outputs' object store, with ttl_s 0); `replicas` comes from
    configuration, like the streams'."""

    name: str
    ttl_s: float  # every entry expires this long after its last write; 0 = never
    description: str
    max_bytes: int = -1  # a key-value bucket refuses writes past this (its discard policy is "new"); -1 = no limit


# Admin UI sessions, shared by every UI replica and kept across restarts. A session is rewritten on each
# request, so the TTL is the idle lifetime of a session (the cookie's max-age is the same).
UI_SESSIONS: Final = BucketSpec(
    name="hub-ui-sessions",
    ttl_s=12 * 3600,
    description="Admin UI sessions (server side; the cookie holds only the id)",
)

# Secrets every UI replica must share (the CSRF signing key), created once by the first replica.
UI_SECRETS: Final = BucketSpec(
    name="hub-ui-secrets",
    ttl_s=0,
    description="Secrets shared by the admin UI replicas",
)
