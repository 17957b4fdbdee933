"""JetStream streams, buckets and the subjects published into them.

Services create what they use at start (idempotently) from these definitions, so the names and limits
live in one place. `replicas` comes from configuration: 1 on one machine, 3 on a NATS cluster.
"""

from __future__ import annotations

from typing import Final

import msgspec

# Generation events: every step of every job, for callers (progress), the stats service (log) and others.
EVENTS_STREAM: Final = "HUB_EVENTS"
EVENTS_SUBJECTS: Final = "hub.events.generation.>"

# Accepted jobs waiting for (or held by) a ComfyUI instance: a work queue, one message per job.
JOBS_STREAM: Final = "HUB_JOBS"
JOBS_SUBJECTS: Final = "hub.jobs.>"

# Generated files (images, videos), addressed by unguessable ids.
OUTPUTS_BUCKET: Final = "hub-outputs"


def event_subject(job_id: str, kind: str) -> str:
    """`hub.events.generation.<job_id>.<kind>`: subscribe to `hub.events.generation.<job_id>.>` for one job."""
    return f"hub.events.generation.{job_id}.{kind}"


def job_events_filter(job_id: str) -> str:
    return f"hub.events.generation.{job_id}.>"


def job_of_event_subject(subject: str) -> str:
    """The job id in `hub.events.generation.<job_id>.<kind>`."""
    return subject.split(".")[3]


def job_subject(job_id: str) -> str:
    return f"hub.jobs.pending.{job_id}"


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits" or "workqueue" (nats.js.api.RetentionPolicy values)
    max_age_s: float  # 0 = no limit
    description: str


EVENTS: Final = StreamSpec(
    name=EVENTS_STREAM,
    subjects=(EVENTS_SUBJECTS,),
    retention="limits",
    max_age_s=14 * 24 * 3600,  # consumers that were down for up to two weeks still catch up
    description="Generation events (accepted ... completed/failed/cancelled) of every job",
)

JOBS: Final = StreamSpec(
    name=JOBS_STREAM,
    subjects=(JOBS_SUBJECTS,),
    retention="workqueue",
    max_age_s=0,
    description="Accepted generation jobs waiting for a ComfyUI instance",
)

ALL_STREAMS: Final = (EVENTS, JOBS)


class BucketSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A JetStream key-value bucket; `replicas` comes from configuration, like the streams'."""

    name: str
    ttl_s: float  # every entry expires this long after its last write; 0 = never
    description: str


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
