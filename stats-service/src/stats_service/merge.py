"""How the events of one job become its log row: a merge that is idempotent and independent of order.

Events may arrive twice (a redelivery after a crash) or out of order (a redelivered `started` after
`completed`). Every rule below is a maximum, a minimum or a set union over the events seen, so applying the
same events in any order, any number of times, gives the same row:

- status: the event with the highest (is final, seq) wins, so an older event never overrides a newer state and a
  final state is never undone by a late non-final one;
- the request (prompts, styles, seed, size, key, client) comes from `accepted`, whenever it arrives;
- the instance comes from the newest event that names one;
- the start time from the newest `started`; timings reported by the final event take precedence;
- outputs are the union of `output_stored` and `completed`, by output id, ordered by file name;
- the model switch (time spent loading models) comes from `completed`, the one event that carries it.
"""

from __future__ import annotations

from contracts.messages import events
from contracts.messages.jobs import FINAL_STATUSES, JobStatus, OutputFile, Timings
from contracts.messages.stats import GenerationRecord

# The status a job is in after each kind of event (a retried job goes back to the queue).
STATUS_AFTER: dict[type, JobStatus] = {
    events.JobAccepted: "accepted",
    events.JobQueued: "queued",
    events.JobStarted: "running",
    events.JobProgress: "running",
    events.OutputStored: "running",
    events.JobRetrying: "queued",
    events.JobCompleted: "completed",
    events.JobFailed: "failed",
    events.JobCancelled: "cancelled",
}


class JobState(GenerationRecord):
    """The merged state of one job, as its row holds it: the columns of the GenerationRecord the log shows, and
    the bookkeeping that makes the merge idempotent and independent of order."""

    # A state starts from its job id alone (its first event may be any); a record always has these.
    status: JobStatus = "accepted"
    render_type: str = ""
    prompt: str = ""
    status_seq: int = 0
    updated_at: float = 0.0
    has_request: bool = False
    instance_seq: int = 0
    seen_accepted_at: float | None = None
    seen_started_at: float | None = None
    seen_started_seq: int = 0
    seen_finished_at: float | None = None
    final_timings: Timings | None = None
    output_count: int = 0

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


def apply_event(state: JobState | None, event: events.GenerationEvent) -> JobState:
    """Merge one event into the state of its job (a new state when `state` is None); returns the state."""
    if state is None:
        state = JobState(job_id=event.job_id, status_seq=-1, logged_at=event.at)
    state.logged_at = min(state.logged_at, event.at)
    if event.instance is not None and event.seq >= state.instance_seq:
        state.instance = event.instance
        state.instance_seq = event.seq
    status = STATUS_AFTER.get(type(event))
    if status is not None and (status in FINAL_STATUSES, event.seq) > (state.is_final, state.status_seq):
        state.status = status
        state.status_seq = event.seq
        if isinstance(event, (events.JobCompleted, events.JobFailed, events.JobCancelled)):
            state.final_timings = event.timings
            state.seen_finished_at = event.at
            state.error = _final_error(event)
    _apply_details(state, event)
    _derive(state)
    return state


def _apply_details(state: JobState, event: events.GenerationEvent) -> None:
    """What an event of one kind adds beyond the status: the request, attempts, retry reasons, outputs."""
    if isinstance(event, events.JobAccepted):
        _apply_request(state, event)
    elif isinstance(event, events.JobStarted):
        state.attempts = max(state.attempts, event.attempt)
        if state.seen_started_at is None or event.seq > state.seen_started_seq:
            state.seen_started_at = event.at
            state.seen_started_seq = event.seq
    elif isinstance(event, events.JobRetrying):
        state.attempts = max(state.attempts, event.attempt)
        where = f" on {event.instance}" if event.instance else ""
        note = f"attempt {event.attempt}{where}: {event.reason}"
        if note not in state.retry_reasons:
            state.retry_reasons = sorted([*state.retry_reasons, note], key=_attempt_of)
    elif isinstance(event, events.OutputStored):
        _add_outputs(state, [event.output], from_final=False)
    elif isinstance(event, events.JobCompleted):
        _add_outputs(state, event.outputs, from_final=True)
        state.model_switch_ms = event.model_switch_ms


def _final_error(event: events.JobCompleted | events.JobFailed | events.JobCancelled) -> str | None:
    if isinstance(event, events.JobFailed):
        return event.error
    if isinstance(event, events.JobCancelled):
        return event.reason
    return None


def _attempt_of(note: str) -> tuple[int, str]:
    number = note.split(" ", 2)[1]
    return (int(number) if number.isdigit() else 0, note)


def _apply_request(state: JobState, event: events.JobAccepted) -> None:
    request = event.request
    state.has_request = True
    state.seen_accepted_at = event.at
    state.render_type = event.render_type
    state.prompt = request.prompt
    state.positive_prompt = event.positive_prompt
    state.negative_prompt = event.negative_prompt
    state.styles = list(event.styles)
    state.seed = event.seed
    state.width = event.width if event.width is not None else request.width
    state.height = event.height if event.height is not None else request.height
    state.api_key_id = request.api_key_id
    state.client_name = request.client_name
    state.enhancement_error = event.enhancement_error


def _add_outputs(state: JobState, outputs: list[OutputFile], *, from_final: bool) -> None:
    """Union by output id, ordered by file name (the order ComfyUI wrote them), whatever the event order.

    What `completed` says about a file wins over what `output_stored` said about it.
    """
    by_id = {o.output_id: o for o in state.outputs}
    for output in outputs:
        if from_final or output.output_id not in by_id:
            by_id[output.output_id] = output
    state.outputs = sorted(by_id.values(), key=lambda o: (o.filename, o.output_id))


def _derive(state: JobState) -> None:
    """The reported timings: what the final event said, else what the events' times tell."""
    final = state.final_timings or Timings()
    state.accepted_at = final.accepted_at if final.accepted_at is not None else state.seen_accepted_at
    state.started_at = final.started_at if final.started_at is not None else state.seen_started_at
    state.finished_at = final.finished_at if final.finished_at is not None else state.seen_finished_at
    state.queue_wait_ms = final.queue_wait_ms
    if state.queue_wait_ms is None and state.accepted_at is not None and state.started_at is not None:
        state.queue_wait_ms = max(0.0, (state.started_at - state.accepted_at) * 1000)
    state.run_ms = final.run_ms
    if state.run_ms is None and state.started_at is not None and state.finished_at is not None:
        state.run_ms = max(0.0, (state.finished_at - state.started_at) * 1000)
    state.output_count = len(state.outputs)
    state.bytes_out = sum(o.size for o in state.outputs)
