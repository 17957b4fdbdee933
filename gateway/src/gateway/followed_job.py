"""A job's view as far as the gateway knows it from following the job: its submission, the view the dispatcher gave
at the start (if any) and the job's events since.

A completed job's events carry its whole result (prompts and seed in `accepted`, outputs and timings in
`completed`, recorded by the dispatcher before it published them), so the answer of a call that saw it complete is
built from them, without asking the dispatcher again. For a job still under way, failed or cancelled the
dispatcher's view (Dispatch.JOBS_GET) stays the answer; this one stands in when the dispatcher does not answer in
time, so a call held by the budgeted wait still gets its job back when the hub is busy (1,000 calls whose budgets
end together ask the one dispatcher for 1,000 views at once).
"""

from __future__ import annotations

import msgspec

from contracts.messages import events
from contracts.messages.jobs import JobView, Progress, SubmitReply

# What a waiting job no longer has once it runs or ended (the dispatcher's view leaves them unset then).
_WAITING_ONLY = {"queue_position": None, "key_queue_position": None, "estimated_start_at": None}


class FollowedJob:
    """Folds a job's events, in order, into its JobView (`view`)."""

    def __init__(self, job_id: str, prompt: str, reply: SubmitReply) -> None:
        self._view = JobView(
            job_id=job_id,
            status=reply.status,
            render_type=reply.render_type,
            prompt=prompt,
            seed=reply.seed,
            error=reply.error,
        )
        self._accepted_seen = False

    @property
    def view(self) -> JobView:
        return self._view

    @property
    def completed(self) -> bool:
        """Whether the job completed and every event of it was seen (they come in order, none skipped, from its
        `accepted` event on): the view then holds its whole result."""
        return self._accepted_seen and self._view.status == "completed"

    def start_from(self, view: JobView) -> None:
        """The dispatcher's view (its queue place, estimated start): the events after it are folded on top."""
        self._view = view

    def note(self, event: events.GenerationEvent) -> None:
        """One event of the job (every event is replayed from the first: an older one changes no later state)."""
        view = self._view
        if isinstance(event, events.JobAccepted):
            self._accepted_seen = True
            self._view = msgspec.structs.replace(
                view,
                render_type=event.render_type,
                prompt=event.request.prompt or view.prompt,
                positive_prompt=event.positive_prompt,
                negative_prompt=event.negative_prompt,
                styles=list(event.styles),
                seed=event.seed,
                width=event.width,
                height=event.height,
                enhancement_error=event.enhancement_error,
                api_key_id=event.request.api_key_id,
                timings=msgspec.structs.replace(view.timings, accepted_at=view.timings.accepted_at or event.at),
            )
        elif isinstance(event, events.JobQueued):
            if view.status == "accepted":
                self._view = msgspec.structs.replace(view, status="queued")
        else:
            self._view = _later(view, event)


def _later(view: JobView, event: events.GenerationEvent) -> JobView:
    """The view after an event of a job that has been queued: it runs, makes progress, is retried or ends."""
    replace = msgspec.structs.replace
    if isinstance(event, events.JobStarted):
        timings = replace(view.timings, started_at=event.at)
        return replace(
            view, status="running", instance=event.instance, attempts=event.attempt, timings=timings, **_WAITING_ONLY
        )
    if isinstance(event, events.JobProgress):
        progress = Progress(value=event.value, max=event.max, node=event.node, percent=event.percent)
        return replace(view, progress=progress)
    if isinstance(event, events.OutputStored):
        known = any(output.output_id == event.output.output_id for output in view.outputs)
        return view if known else replace(view, outputs=[*view.outputs, event.output])
    if isinstance(event, events.JobRetrying):
        failures = [*view.failures, f"{event.instance}: {event.reason}"]
        return replace(view, status="queued", instance=None, failures=failures, progress=Progress())
    if isinstance(event, events.JobCompleted):
        progress = Progress(value=view.progress.max, max=view.progress.max, percent=100.0)
        ended = replace(view, status="completed", outputs=event.outputs, progress=progress)
    elif isinstance(event, events.JobFailed):
        ended = replace(view, status="failed", error=event.error)
    elif isinstance(event, events.JobCancelled):
        ended = replace(view, status="cancelled", error=event.reason)
    else:
        return view
    return replace(ended, instance=event.instance or view.instance, timings=event.timings, **_WAITING_ONLY)
