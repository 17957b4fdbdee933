"""Fetching `input_image.url` without letting a caller reach the hub's own network (SSRF): every hop (redirects
are followed by hand) goes through the address checks of contracts.runtime.outbound_url."""

from __future__ import annotations

from urllib.parse import urljoin

import httpx

from contracts.errors import ErrorCode, HubError
from contracts.runtime.outbound_url import UrlAllowlist, checked_address, pinned_request

FIELD = "input_image.url"
MAX_REDIRECTS = 5
FETCH_TIMEOUT_S = 20
ALLOW_VARIABLE = "HUB_INPUT_URL_ALLOW"


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise HubError(
                ErrorCode.INVALID_REQUEST, f"input_image.url: the image is larger than {max_bytes} bytes", field=FIELD
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_checked(client: httpx.AsyncClient, url: httpx.URL, allow: UrlAllowlist, max_bytes: int) -> bytes:
    for _hop in range(MAX_REDIRECTS + 1):
        address = await checked_address(url, allow, field=FIELD, variable=ALLOW_VARIABLE)
        request = pinned_request(client, url, address)
        response = await client.send(request, stream=True)
        try:
            if response.is_redirect and "location" in response.headers:
                url = httpx.URL(urljoin(str(url), response.headers["location"]))
                continue
            if response.status_code != 200:
                raise HubError(
                    ErrorCode.INVALID_REQUEST, f"input_image.url answered HTTP {response.status_code}", field=FIELD
                )
            return await _read_limited(response, max_bytes)
        finally:
            await response.aclose()
    raise HubError(ErrorCode.INVALID_REQUEST, f"input_image.url: more than {MAX_REDIRECTS} redirects", field=FIELD)


async def fetch_input_url(raw_url: str, allow: UrlAllowlist, max_bytes: int) -> bytes:
    """The body of `raw_url` (at most `max_bytes`), fetched only from addresses the rules let through."""
    try:
        url = httpx.URL(raw_url)
    except httpx.InvalidURL as exc:
        raise HubError(ErrorCode.INVALID_REQUEST, f"input_image.url is not a valid URL ({exc})", field=FIELD) from None
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
            return await _fetch_checked(client, url, allow, max_bytes)
    except httpx.HTTPError as exc:
        raise HubError(ErrorCode.INVALID_REQUEST, f"input_image.url could not be fetched: {exc}", field=FIELD) from None
