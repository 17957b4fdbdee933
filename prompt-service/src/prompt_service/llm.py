"""Prompt rewriting by an LLM: Ollama's native API, or any OpenAI-compatible server (llama.cpp, vLLM,
LM Studio, Ollama's /v1).

- Ollama: `GET /api/tags` lists the models; `POST /api/chat` with `stream: false`, `options.temperature`
  and `keep_alive` rewrites.
- OpenAI-compatible: `GET /v1/models` and `POST /v1/chat/completions`, with `Authorization: Bearer <key>`
  when a key is set. A base URL given with or without its trailing `/v1` works.

`enhance` never raises and never takes longer than its timeout: on a timeout, a refused connection, an HTTP
error, a malformed body, or an answer that is empty or clearly not a prompt, it returns the prompt unchanged
with the reason. `clean_answer` strips what chatty models wrap around the prompt (quotes, "Here is the
prompt:", markdown, <think> blocks, trailing explanations) and rejects what cannot be a prompt.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx

from contracts.errors import ErrorCode, HubError
from contracts.messages.styles import EnhanceResult, LlmSettings
from contracts.runtime.database import describe  # a URL without its password, for messages
from prompt_service.llm_settings import DEFAULT_SYSTEM_PROMPT

MAX_OUTPUT_TOKENS = 1024  # bounds a runaway model; a prompt needs a fraction of it
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)\n?```$", re.DOTALL)
_CHATTY_OPENING = re.compile(r"^(sure|okay|ok|certainly|of course|absolutely|alright|great)\b[!,.:]*\s*", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^(?:here(?:'s| is| are)\b[^:\n]{0,120}:"
    r"|(?:the |an? |my |your )?(?:new |final |enhanced |improved |rewritten |refined |revised |better |detailed )*"
    r"(?:image |text-to-image |stable diffusion |sd )?prompt\s*(?:\([^)\n]{0,40}\))?\s*:)\s*",
    re.IGNORECASE,
)
_COMMENTARY = re.compile(
    r"^(?:this|these|note|i|the prompt|the rewritten prompt|explanation|changes|feel free|let me know|hope|"
    r"key changes|key additions)\b|^\(note",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^(i'?m sorry|i am sorry|sorry[,.!]|i (?:can ?not|can't|won't|am unable|'m unable|am not able)|"
    r"as an ai|i apologi[sz]e|unfortunately)",
    re.IGNORECASE,
)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"), ("`", "`")]


class LlmError(Exception):
    """Why the LLM gave no usable prompt, in words an admin can act on."""


def server_label(settings: LlmSettings) -> str:
    return "Ollama" if settings.provider == "ollama" else "the OpenAI-compatible server"


def _url(settings: LlmSettings, ollama_path: str, openai_path: str) -> str:
    base = settings.base_url.rstrip("/")
    if settings.provider == "ollama":
        return base.removesuffix("/api") + ollama_path
    return base.removesuffix("/v1") + "/v1" + openai_path


def _headers(settings: LlmSettings) -> dict[str, str]:
    if settings.provider == "openai" and settings.api_key:
        return {"Authorization": f"Bearer {settings.api_key}"}
    return {}


def _error_text(response: httpx.Response) -> str:
    """The server's own error message: Ollama's {"error": "..."} or OpenAI's {"error": {"message": ...}}."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or body)[:300]


def _hint(settings: LlmSettings, status: int, text: str) -> str:
    if status in (401, 403):
        return "; check the API key in the LLM settings"
    if status == 404 and "model" in text.lower():
        pull = f" (`ollama pull {settings.model}`)" if settings.provider == "ollama" else ""
        return f"; install the model{pull} or choose one the server lists"
    if status == 404:
        return "; check the base URL and the provider"
    return ""


async def _call(
    http: httpx.AsyncClient, settings: LlmSettings, method: str, url: str, timeout_s: float, body: Any = None
) -> Any:
    """One request to the LLM server within `timeout_s` all told; its JSON body, or `LlmError`."""
    label, where = server_label(settings), describe(settings.base_url)
    try:
        async with asyncio.timeout(timeout_s):
            response = await http.request(
                method, url, json=body, headers=_headers(settings), timeout=httpx.Timeout(timeout_s)
            )
    except (TimeoutError, httpx.TimeoutException):
        raise LlmError(f"{label} at {where} did not answer within {timeout_s:g} s") from None
    except httpx.ConnectError as exc:
        raise LlmError(f"cannot connect to {label} at {where} ({exc or 'connection refused'})") from None
    except httpx.HTTPError as exc:
        raise LlmError(f"{label} at {where} failed: {exc or type(exc).__name__}") from None
    if response.status_code >= 400:
        text = _error_text(response)
        hint = _hint(settings, response.status_code, text)
        raise LlmError(f"{label} answered HTTP {response.status_code}: {text}{hint}")
    try:
        return response.json()
    except ValueError:
        raise LlmError(f"{label} sent a malformed answer (not JSON, or cut short)") from None


async def list_models(http: httpx.AsyncClient, settings: LlmSettings, timeout_s: float) -> list[str]:
    """The models the server has, sorted; `HubError` (unavailable) when it cannot tell."""
    url = _url(settings, "/api/tags", "/models")
    try:
        body = await _call(http, settings, "GET", url, timeout_s)
    except LlmError as exc:
        raise HubError(ErrorCode.UNAVAILABLE, str(exc), field="base_url") from None
    try:
        if settings.provider == "ollama":
            names = [m.get("name") or m.get("model") for m in body.get("models") or []]
        else:
            names = [m.get("id") for m in body.get("data") or []]
    except AttributeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise HubError(
            ErrorCode.UNAVAILABLE,
            f"{url} did not answer with a model list; is {server_label(settings)} what runs there?",
            field="base_url",
        )
    return sorted(set(names), key=str.lower)


async def complete(http: httpx.AsyncClient, settings: LlmSettings, prompt: str, timeout_s: float) -> str:
    """The model's raw answer to the system prompt plus `prompt`."""
    messages = [
        {"role": "system", "content": settings.system_prompt or DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    if settings.provider == "ollama":
        body: dict[str, Any] = {
            "model": settings.model,
            "messages": messages,
            "stream": False,
            "keep_alive": _keep_alive(settings.keep_alive),
            "options": {"temperature": settings.temperature, "num_predict": MAX_OUTPUT_TOKENS},
        }
    else:
        body = {
            "model": settings.model,
            "messages": messages,
            "stream": False,
            "temperature": settings.temperature,
            "max_tokens": MAX_OUTPUT_TOKENS,
        }
    answer = await _call(http, settings, "POST", _url(settings, "/api/chat", "/chat/completions"), timeout_s, body)
    try:
        if settings.provider == "ollama":
            content = answer["message"]["content"]
        else:
            content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LlmError(f"{server_label(settings)} answered without a message") from None
    if not isinstance(content, str):
        raise LlmError(f"{server_label(settings)} answered with a message that is not text")
    return content


def _keep_alive(value: str) -> str | int:
    # Ollama reads a bare number as seconds only when it is a JSON number.
    return int(value) if value.lstrip("-").isdigit() else value


def max_length(original: str) -> int:
    """The longest answer taken for a prompt: generous, yet far below what a rambling model writes."""
    return min(8000, max(1500, 4 * len(original)))


def _unquote(text: str) -> str:
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for opening, closing in _QUOTES:
            if text.startswith(opening) and text.endswith(closing) and opening not in text[1:-1]:
                text, changed = text[1:-1].strip(), True
    return text


def _from_json(text: str) -> str | None:
    """The prompt out of an answer like {"prompt": "..."}, which some models send despite the instructions."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("prompt", "enhanced_prompt", "positive", "text"):
            if isinstance(data.get(key), str):
                return data[key]
    return None


def clean_answer(raw: str, original: str) -> str:
    """The prompt inside a model's answer, or `LlmError` saying why the answer is not one."""
    text = _unwrap_data(_strip_reasoning(raw))
    if _REFUSAL.match(text):
        raise LlmError(f"the LLM refused: {' '.join(text.split())[:120]!r}")
    text = _drop_commentary(_strip_preambles(text.replace("**", "")))  # markdown bold never belongs in a prompt
    _check_reads_as_prompt(text, original)
    return text


def _strip_reasoning(raw: str) -> str:
    if "\ufffd" in raw or "\x00" in raw:
        raise LlmError("the LLM's answer is garbled (it holds invalid characters)")
    text = raw.strip()
    if re.match(r"<think>", text, re.IGNORECASE) and "</think>" not in text.lower():
        raise LlmError("the LLM's answer stopped inside its reasoning (<think> without </think>)")
    return _THINK.sub("", text).strip()


def _unwrap_data(text: str) -> str:
    """The text inside a code fence, and the prompt field of a JSON answer."""
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1).strip()
    if text.startswith(("{", "[")):
        extracted = _from_json(text)
        if extracted is None:
            raise LlmError("the LLM answered with data (JSON), not a prompt")
        text = extracted.strip()
    return text


def _strip_preambles(text: str) -> str:
    for _ in range(3):  # "Sure! Here is the prompt:\n### Prompt\nPrompt: ..." has several layers
        before = text
        text = _CHATTY_OPENING.sub("", text, count=1).strip()
        text = _PREAMBLE.sub("", text, count=1).strip()
        lines = text.split("\n")
        first = lines[0].strip()
        if len(lines) > 1 and len(first) < 160 and (first.endswith(":") or first.startswith("#")):
            text = "\n".join(lines[1:]).strip()  # "A more detailed version of your prompt:" / "### Prompt"
        if text == before:
            break
    return text


def _drop_commentary(text: str) -> str:
    """One line of prompt: paragraphs after the first are dropped when they only comment on it."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) > 1 and all(_COMMENTARY.match(_unquote(p)) for p in paragraphs[1:]):
        paragraphs = paragraphs[:1]
    return " ".join(_unquote(" ".join(paragraphs)).split())


def _check_reads_as_prompt(text: str, original: str) -> None:
    if not text:
        raise LlmError("the LLM's answer was empty")
    if len(text) > max_length(original):
        raise LlmError(f"the LLM's answer is {len(text)} characters long (at most {max_length(original)} taken)")
    letters = sum(c.isalpha() for c in text)
    if letters < 3 or letters < 0.5 * len(text.replace(" ", "")):
        raise LlmError(f"the LLM's answer does not read as a prompt: {text[:80]!r}")
    if text.endswith("?") and len(text) < 300:
        raise LlmError(f"the LLM asked a question instead of rewriting: {text[:120]!r}")


async def enhance(http: httpx.AsyncClient, settings: LlmSettings, prompt: str, timeout_s: float) -> EnhanceResult:
    """The rewritten prompt, or the prompt as given with the reason; within `timeout_s`, never raises."""
    started = time.perf_counter()

    def result(enhanced: str, error: str | None, raw: str = "") -> EnhanceResult:
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        return EnhanceResult(
            original=prompt,
            enhanced=enhanced,
            ok=error is None,
            error=error,
            elapsed_ms=elapsed,
            model=settings.model,
            raw=raw,
        )

    if not settings.model:
        return result(prompt, "no LLM model is chosen; pick one in the LLM settings")
    raw = ""
    try:
        raw = await complete(http, settings, prompt, timeout_s)
        return result(clean_answer(raw, prompt), None, raw)
    except LlmError as exc:
        return result(prompt, str(exc), raw)
    except Exception as exc:  # enhancement is best-effort: no surprise may fail a generation
        return result(prompt, f"the LLM call failed unexpectedly: {type(exc).__name__}: {exc}", raw)
