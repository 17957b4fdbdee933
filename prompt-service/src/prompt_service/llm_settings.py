"""The LLM settings, kept as one JSON setting in the service's store.

The LLM's API key is stored as given and leaves the service only masked: `masked()` is what GET returns,
and a save that sends the masked value (or None) back keeps the stored key.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

from contracts.errors import ErrorCode, HubError
from contracts.messages.styles import LlmSettings
from prompt_service.store import read_setting, transaction, write_setting

LLM_KEY = "llm"
DEFAULT_SYSTEM_PROMPT = (
    "You rewrite prompts for a text-to-image model. Rewrite the user's prompt into one richer prompt that "
    "keeps the user's subject, every element, name, number, quoted text and style they asked for, and adds "
    "concrete visual detail: setting, composition, lighting, colours, materials, mood, camera or medium. Do "
    "not add people, animals, objects or text the user did not ask for, and do not change what they asked "
    "for. Write in English, as one line of comma-separated phrases, at most 80 words. Reply with the prompt "
    "only: no preamble, no explanation, no quotes, no markdown."
)
_KEEP_ALIVE = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^-?\d+$")
_MASK = "••••"


async def load_llm_settings() -> LlmSettings:
    """The stored LLM settings (with the real API key), or the defaults before anyone saved them."""
    stored = await read_setting(LLM_KEY)
    return msgspec.convert(stored, LlmSettings) if stored else LlmSettings()


def mask_key(key: str | None) -> str | None:
    if not key:
        return None
    return _MASK + key[-4:] if len(key) >= 12 else _MASK


def masked(settings: LlmSettings) -> LlmSettings:
    """What the settings look like outside the service: the key masked, the built-in system prompt shown."""
    return msgspec.structs.replace(
        settings,
        api_key=mask_key(settings.api_key),
        api_key_set=bool(settings.api_key),
        default_system_prompt=DEFAULT_SYSTEM_PROMPT,
    )


def resolved(incoming: LlmSettings, stored: LlmSettings, field: str = "settings") -> LlmSettings:
    """`incoming` checked and tidied, with the stored API key kept unless a new one (or "") was sent."""
    parts = urlsplit(incoming.base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"base_url {incoming.base_url!r} is not an http(s) URL; e.g. http://127.0.0.1:11434 for Ollama, "
            "http://127.0.0.1:8080/v1 for llama.cpp",
            field=f"{field}.base_url",
        )
    keep_alive = incoming.keep_alive.strip()
    if not _KEEP_ALIVE.match(keep_alive):
        raise HubError(
            ErrorCode.INVALID_REQUEST,
            f"keep_alive {incoming.keep_alive!r} is not a duration; use e.g. '5m', '1h', '30s', '0' (unload at "
            "once) or '-1' (keep loaded)",
            field=f"{field}.keep_alive",
        )
    if len(incoming.system_prompt) > 8000:
        message = "the system prompt is longer than 8000 characters"
        raise HubError(ErrorCode.INVALID_REQUEST, message, field=f"{field}.system_prompt")
    api_key = incoming.api_key
    if api_key is None or (stored.api_key and api_key == mask_key(stored.api_key)):
        api_key = stored.api_key
    api_key = (api_key or "").strip() or None
    if api_key and any(c.isspace() for c in api_key):
        raise HubError(ErrorCode.INVALID_REQUEST, "the API key contains spaces", field=f"{field}.api_key")
    return msgspec.structs.replace(
        incoming,
        base_url=incoming.base_url.strip().rstrip("/"),
        model=incoming.model.strip(),
        system_prompt=incoming.system_prompt.strip(),
        keep_alive=keep_alive,
        api_key=api_key,
        api_key_set=False,
        default_system_prompt="",
    )


async def save_llm_settings(incoming: LlmSettings) -> LlmSettings:
    async with transaction():
        settings = resolved(incoming, await load_llm_settings())
        await write_setting(LLM_KEY, settings)
    return settings
