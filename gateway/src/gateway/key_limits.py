"""The limits of a caller's key at the gateway's door (REST and MCP alike): what can be refused before the job
reaches the dispatcher is refused here, the rest travels with the request (the dispatcher counts waiting jobs)."""

from __future__ import annotations

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.jobs import GenerationRequest
from contracts.messages.keys import ApiKey


def with_key_limits(generation: GenerationRequest, key: ApiKey | None) -> GenerationRequest:
    """The request to submit for `key` (its limits, and whether it has webhook URLs: the job's events are then copied
    for the webhook consumer), or HubError when it asks more images than the key may have per job."""
    if key is None:
        return generation
    limits = key.limits
    if limits.max_images_per_job is not None and generation.count > limits.max_images_per_job:
        # Not a 429: the same request would be refused again later, so there is no time to wait for.
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"`count` is {generation.count} but key `{key.name}` may ask at most {limits.max_images_per_job} "
            "images per job (max_images_per_job); lower `count` or split the request",
            field="count",
            details={"limit": "max_images_per_job", "max": limits.max_images_per_job},
        )
    return msgspec.structs.replace(
        generation,
        max_waiting=limits.max_waiting,
        max_running=limits.max_running,
        weight=limits.weight,
        key_webhooks=bool(key.webhook_urls),
    )
