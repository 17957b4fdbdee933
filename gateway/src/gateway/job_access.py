"""Which jobs an API key may reach: a job belongs to the key that made it.

Every door that takes a job id (REST GET/DELETE/events, the MCP tools and tasks) goes through here, and answers
another key's job exactly as an id that does not exist: the same error, built in one place, so nothing tells
a stranger that the id is real. A key with the `jobs:read-all` scope (set by an admin) reads every job but
cancels only its own; jobs made in the admin UI have no key and only such a key reads them.
"""

from __future__ import annotations

from contracts.errors import ErrorCode, HubError
from contracts.messages.events import JobAccepted
from contracts.messages.jobs import JobView
from contracts.messages.keys import READ_ALL_JOBS, ApiKey
from gateway.hub_client import HubClient


def job_not_found(job_id: str) -> HubError:
    return HubError(ErrorCode.NOT_FOUND, f"no job with id {job_id!r}", field="job_id")


def may_read(key: ApiKey | None, view: JobView) -> bool:
    return _may_read_made_by(key, view.api_key_id)


def _may_read_made_by(key: ApiKey | None, api_key_id: str | None) -> bool:
    """Whether `key` may read a job made with `api_key_id` (None: made without a key, in the admin UI)."""
    if key is None:
        return False
    return api_key_id == key.key_id or READ_ALL_JOBS in key.scopes


def may_cancel(key: ApiKey | None, view: JobView) -> bool:
    return key is not None and view.api_key_id == key.key_id


async def _job(hub: HubClient, job_id: str) -> JobView:
    try:
        return await hub.job(job_id)
    except HubError as exc:
        if exc.code is ErrorCode.NOT_FOUND:
            raise job_not_found(job_id) from None
        raise


async def readable_job(hub: HubClient, key: ApiKey | None, job_id: str) -> JobView:
    """The job, if `key` may read it; otherwise the not-found error of an unknown id."""
    view = await _job(hub, job_id)
    if not may_read(key, view):
        raise job_not_found(job_id)
    return view


async def check_readable(hub: HubClient, key: ApiKey | None, job_id: str) -> None:
    """As `readable_job`, for a door that needs no view (the event stream): the key that made the job is read from
    its first stored event (a direct get from the events stream) instead of asking the dispatcher for the job's view
    (its queue place, run time estimates); anything else (another key's job, an unknown id, an event no longer kept)
    goes through `readable_job`, so every refusal is its one not-found error."""
    first = await hub.first_event(job_id)
    if not (isinstance(first, JobAccepted) and _may_read_made_by(key, first.request.api_key_id)):
        await readable_job(hub, key, job_id)


async def cancellable_job(hub: HubClient, key: ApiKey | None, job_id: str) -> JobView:
    """The job, if `key` made it. A key that may read it but did not make it (read-all) is told it may not
    cancel it; any other key gets the not-found error of an unknown id."""
    view = await readable_job(hub, key, job_id)
    if not may_cancel(key, view):
        raise HubError(
            ErrorCode.FORBIDDEN,
            f"job {job_id!r} was made by another API key; a `{READ_ALL_JOBS}` key reads every job but cancels "
            "only its own",
            field="job_id",
        )
    return view


async def cancel_own_job(hub: HubClient, key: ApiKey | None, job_id: str, reason: str) -> JobView:
    await cancellable_job(hub, key, job_id)
    try:
        return await hub.cancel(job_id, reason)
    except HubError as exc:
        if exc.code is ErrorCode.NOT_FOUND:  # removed in between
            raise job_not_found(job_id) from None
        raise
