"""prompt-service over real NATS against the Ollama test double: LLM settings, model lists, prompt rewriting
through Ollama's API and the OpenAI-compatible one, and the fallbacks that keep a generation going when the
LLM is slow, down, or talks nonsense."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from harness import ServiceProcess
from nats.aio.client import Client as NatsClient
from prompt_support import P, RecordingOllama, build, failure, prompt_fixture, replace_styles, save_llm

from contracts import endpoints
from contracts.errors import ErrorCode
from contracts.messages.styles import (
    GetLlmSettings,
    ListLlmModels,
    LlmSettings,
    Style,
)
from contracts.messages.styles import (
    TryEnhancement as TryEnhance,
)
from contracts.runtime.bus import call

FAST = 0.6  # the LLM timeout of the fallback tests, in seconds


# Callers wait 3 s for a reply, so the service gives the LLM 1.5 s at most, whatever its settings say.
service = prompt_fixture("prompt-llm", HUB_REQUEST_TIMEOUT_S="3")


@pytest.fixture
async def ollama() -> AsyncIterator[RecordingOllama]:
    async with RecordingOllama() as double:
        yield double


@pytest.fixture
async def styled(service: ServiceProcess, nc: NatsClient) -> None:
    """One style, to see that the rewrite happens before the styles wrap the prompt."""
    await replace_styles(nc, [Style(name="frame", positive="framed picture of {prompt}, gold frame", negative="ugly")])


def chats(double: RecordingOllama, path: str = "/api/chat") -> list[dict]:
    return [body for p, body in double.requests if p == path]


# -- settings ---------------------------------------------------------------------------------------------


async def test_llm_settings_are_stored_and_the_api_key_never_comes_back_in_full(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama
) -> None:
    saved = await save_llm(
        nc,
        provider="openai",
        base_url=ollama.url + "/v1/",
        model=" llama3.2:3b ",
        temperature=0.2,
        timeout_s=7,
        api_key="sk-test-1234567890abcd",
    )
    assert saved.api_key == "••••abcd" and saved.api_key_set
    assert saved.base_url == ollama.url + "/v1" and saved.model == "llama3.2:3b"
    read = await call(nc, P.LLM_SETTINGS_GET, GetLlmSettings())
    assert read == saved
    assert "sk-test" not in str(read) and "prompt only" in read.default_system_prompt and read.system_prompt == ""

    async def bearer() -> str:
        ollama.headers.clear()
        result = await call(nc, P.LLM_TEST, TryEnhance(prompt="a cat"))
        assert result.ok, result.error
        return next(h.get("Authorization", "") for p, h in ollama.headers if p == "/v1/chat/completions")

    assert await bearer() == "Bearer sk-test-1234567890abcd"
    # Saving the form back with the masked value (or no key at all) keeps the stored key.
    await save_llm(nc, **{**_fields(read), "temperature": 0.3})
    assert await bearer() == "Bearer sk-test-1234567890abcd"
    await save_llm(nc, **{**_fields(read), "api_key": None})
    assert await bearer() == "Bearer sk-test-1234567890abcd"
    cleared = await save_llm(nc, **{**_fields(read), "api_key": ""})
    assert cleared.api_key is None and not cleared.api_key_set
    assert await bearer() == ""


def _fields(settings: LlmSettings) -> dict[str, object]:
    return {
        k: getattr(settings, k)
        for k in ("provider", "base_url", "model", "system_prompt", "temperature", "timeout_s", "keep_alive", "api_key")
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"base_url": "localhost:11434"}, "settings.base_url"),
        ({"base_url": "ftp://x"}, "settings.base_url"),
        ({"keep_alive": "five minutes"}, "settings.keep_alive"),
        ({"temperature": 3}, "settings.temperature"),
        ({"timeout_s": 0}, "settings.timeout_s"),
        ({"provider": "anthropic"}, "settings.provider"),
    ],
)
async def test_wrong_llm_settings_are_refused_naming_the_field(
    service: ServiceProcess, nc: NatsClient, fields: dict[str, object], field: str
) -> None:
    body = {"settings": {"model": "m", **fields}}
    reply = await nc.request(P.LLM_SETTINGS_SAVE.subject, json.dumps(body).encode(), timeout=5)
    assert f'"field":"{field}"'.encode() in reply.data, reply.data


async def test_the_models_of_the_server_are_listed_for_both_providers(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama
) -> None:
    ollama.models = ["qwen2.5:7b", "llama3.2:3b", "Mistral:latest"]
    await save_llm(nc, base_url=ollama.url, model="")
    listed = await call(nc, P.LLM_MODELS, ListLlmModels())
    assert listed.models == ["llama3.2:3b", "Mistral:latest", "qwen2.5:7b"]
    assert listed.provider == "ollama" and ("/api/tags", {}) in ollama.requests

    trial = LlmSettings(provider="openai", base_url=ollama.url)  # unsaved settings, as the UI tries them
    openai = await call(nc, P.LLM_MODELS, ListLlmModels(settings=trial))
    assert openai.models == listed.models and openai.provider == "openai"
    assert ("/v1/models", {}) in ollama.requests

    await ollama.go_down()
    error = await failure(nc, P.LLM_MODELS, ListLlmModels())
    assert error.code == ErrorCode.UNAVAILABLE and f"cannot connect to Ollama at {ollama.url}" in error.info.message
    await ollama.go_up()
    ollama.fault_scope, ollama.mode = "all", "error"
    error = await failure(nc, P.LLM_MODELS, ListLlmModels())
    assert error.code == ErrorCode.UNAVAILABLE and "HTTP 500" in error.info.message


# -- enhancement ------------------------------------------------------------------------------------------


async def test_the_prompt_is_rewritten_through_ollama_before_the_styles_wrap_it(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b", temperature=0.35, keep_alive="10m")
    built = await build(nc, "a lighthouse", styles=["frame"], enhance=True)
    rewrite = "A detailed, cinematic rendering of a lighthouse, soft light, high detail"
    assert built.enhanced and built.enhancement_error is None
    assert built.enhanced_prompt == rewrite and built.user_prompt == "a lighthouse" and built.llm_model == "llama3.2:3b"
    assert built.positive == f"framed picture of {rewrite}, gold frame"
    assert built.negative == "ugly"
    assert [t.step for t in built.trace][:1] == ["enhance"] and "llama3.2:3b" in built.trace[0].detail

    (body,) = chats(ollama)
    assert body["model"] == "llama3.2:3b" and body["stream"] is False and body["keep_alive"] == "10m"
    assert body["options"]["temperature"] == 0.35
    system, user = body["messages"]
    assert system["role"] == "system" and "keeps the user's subject" in system["content"]
    assert "prompt only" in system["content"]
    assert user == {"role": "user", "content": "a lighthouse"}


async def test_a_custom_system_prompt_and_keep_alive_in_seconds_are_sent(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b", system_prompt="Answer in haiku.", keep_alive="-1")
    await build(nc, "a lighthouse", styles=[], enhance=True)
    (body,) = chats(ollama)
    assert body["messages"][0]["content"] == "Answer in haiku." and body["keep_alive"] == -1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('Here is the prompt: "a lighthouse in a storm, crashing waves"', "a lighthouse in a storm, crashing waves"),
        ("Sure! Here's an enhanced version of your prompt:\n\n**a lighthouse at night, beam of light**", None),
        ("<think>The user wants drama.</think>\n\na lighthouse at night, beam of light", None),
        ("a lighthouse at night, beam of light\n\nThis prompt adds a beam and night for drama.", None),
        ("```\na lighthouse at night, beam of light\n```", None),
        ('{"prompt": "a lighthouse at night, beam of light"}', None),
    ],
)
async def test_chatty_answers_are_cleaned_down_to_the_prompt(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, answer: str, expected: str | None
) -> None:
    ollama.reply = answer
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b")
    built = await build(nc, "a lighthouse", styles=[], enhance=True)
    assert built.enhanced, built.enhancement_error
    assert built.positive == (expected or "a lighthouse at night, beam of light")


async def long_answer(double: RecordingOllama) -> None:
    double.reply = "a lighthouse, " * 400


async def refusal(double: RecordingOllama) -> None:
    double.reply = "I'm sorry, but I can't help with creating that image."


async def question(double: RecordingOllama) -> None:
    double.reply = "What kind of lighthouse would you like?"


async def down(double: RecordingOllama) -> None:
    await double.go_down()


def setting(attribute: str, value: object):  # type: ignore[no-untyped-def]
    async def apply(double: RecordingOllama) -> None:
        setattr(double, attribute, value)

    apply.__name__ = f"{attribute}={value}"
    return apply


FAILURES = [
    (setting("mode", "hang"), "did not answer within 0.6 s"),
    (setting("delay_seconds", 5.0), "did not answer within 0.6 s"),
    (down, "cannot connect to Ollama"),
    (setting("mode", "error"), "HTTP 500: the model failed to generate a response"),
    (setting("mode", "garbage"), "malformed answer"),
    (setting("mode", "empty"), "answer was empty"),
    (setting("models", ["other:1b"]), "model 'llama3.2:3b' not found; install the model (`ollama pull llama3.2:3b`)"),
    (long_answer, "characters long"),
    (refusal, "the LLM refused"),
    (question, "asked a question"),
]


@pytest.mark.parametrize(("fault", "reason"), FAILURES, ids=[f.__name__ for f, _ in FAILURES])
async def test_any_llm_failure_falls_back_to_the_prompt_as_typed_quickly(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None, fault, reason: str
) -> None:
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b", timeout_s=FAST)
    plain = await build(nc, "a lighthouse", negative_prompt="fog", styles=["frame"])
    await fault(ollama)
    started = time.monotonic()
    built = await build(nc, "a lighthouse", negative_prompt="fog", styles=["frame"], enhance=True)
    elapsed = time.monotonic() - started
    assert elapsed < FAST + 1.5, f"the fallback took {elapsed:.2f} s"
    assert (built.positive, built.negative, built.styles_applied) == (plain.positive, plain.negative, ["frame"])
    assert not built.enhanced and built.enhanced_prompt == ""
    assert built.enhancement_error is not None and reason in built.enhancement_error, built.enhancement_error
    skipped = [t for t in built.trace if t.step == "enhance_skipped"]
    assert len(skipped) == 1 and reason in skipped[0].detail and "used as typed" in skipped[0].detail

    # The preview says the same, and the test box shows what went wrong.
    previewed = await build(
        nc, "a lighthouse", negative_prompt="fog", styles=["frame"], enhance=True, endpoint=P.PREVIEW
    )
    assert previewed.positive == plain.positive and reason in (previewed.enhancement_error or "")
    tested = await call(nc, P.LLM_TEST, TryEnhance(prompt="a lighthouse"))
    assert not tested.ok and tested.enhanced == "a lighthouse" and reason in (tested.error or "")


async def test_the_llm_works_again_once_it_is_back(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b", timeout_s=FAST)
    await ollama.go_down()
    assert not (await build(nc, "a lighthouse", enhance=True, styles=[])).enhanced
    await ollama.go_up()
    assert (await build(nc, "a lighthouse", enhance=True, styles=[])).enhanced


async def test_without_a_model_enhancement_is_skipped_without_calling_the_server(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    await save_llm(nc, base_url=ollama.url, model="")
    built = await build(nc, "a lighthouse", styles=["frame"], enhance=True)
    assert not built.enhanced and "no LLM model is chosen" in (built.enhancement_error or "")
    assert built.positive == "framed picture of a lighthouse, gold frame" and ollama.requests == []


async def test_without_enhance_the_llm_is_not_called(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b")
    built = await build(nc, "a lighthouse", styles=["frame"])
    assert not built.enhanced and built.enhancement_error is None and ollama.requests == []


async def test_an_openai_compatible_server_rewrites_with_a_bearer_key(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    for base_url in (ollama.url, ollama.url + "/v1"):
        ollama.requests.clear()
        ollama.headers.clear()
        await save_llm(nc, provider="openai", base_url=base_url, model="qwen2.5:7b", api_key="local-secret-key")
        built = await build(nc, "a lighthouse", styles=["frame"], enhance=True)
        assert built.enhanced, built.enhancement_error
        assert built.positive == (
            "framed picture of A detailed, cinematic rendering of a lighthouse, soft light, high detail, gold frame"
        )
        (body,) = chats(ollama, "/v1/chat/completions")
        assert body["model"] == "qwen2.5:7b" and body["stream"] is False and body["temperature"] == 0.7
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert "keep_alive" not in body and chats(ollama) == []
        (headers,) = [h for p, h in ollama.headers if p == "/v1/chat/completions"]
        assert headers["Authorization"] == "Bearer local-secret-key"

    # Its failures fall back the same way, with the server's own error message.
    await save_llm(nc, provider="openai", base_url=ollama.url, model="missing:1b", timeout_s=FAST)
    built = await build(nc, "a lighthouse", styles=[], enhance=True)
    assert built.positive == "a lighthouse"
    assert "HTTP 404: model 'missing:1b' not found" in (built.enhancement_error or "")


async def test_the_test_box_reports_the_rewrite_the_raw_answer_and_the_time(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama
) -> None:
    ollama.reply = 'Prompt: "a fox in snow, golden hour"'
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b")
    result = await call(nc, P.LLM_TEST, TryEnhance(prompt="a fox"))
    assert result.ok and result.enhanced == "a fox in snow, golden hour" and result.original == "a fox"
    assert result.raw == 'Prompt: "a fox in snow, golden hour"' and result.model == "llama3.2:3b"
    assert result.elapsed_ms > 0

    # Settings not saved yet can be tried; the stored ones stay as they were.
    trial = LlmSettings(base_url=ollama.url, model="qwen2.5:7b", system_prompt="Be brief.")
    tried = await call(nc, P.LLM_TEST, TryEnhance(prompt="a fox", settings=trial))
    assert tried.ok and tried.model == "qwen2.5:7b" and chats(ollama)[-1]["messages"][0]["content"] == "Be brief."
    assert (await call(nc, P.LLM_SETTINGS_GET, GetLlmSettings())).model == "llama3.2:3b"


async def test_a_slow_llm_never_holds_a_build_past_the_callers_request_timeout(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama
) -> None:
    """With a generous LLM timeout but HUB_REQUEST_TIMEOUT_S=3, the reply still comes within 3 s."""
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b", timeout_s=120)
    ollama.mode = "hang"
    started = time.monotonic()
    built = await build(nc, "a lighthouse", styles=[], enhance=True)
    assert time.monotonic() - started < 3
    assert not built.enhanced and "within 1.5 s" in (built.enhancement_error or "")

    # A caller that says it waits longer gets the LLM for that long instead.
    ollama.mode, ollama.delay_seconds = "ok", 2.0
    built = await build(nc, "a lighthouse", styles=[], enhance=True, enhance_timeout_s=4)
    assert built.enhanced, built.enhancement_error


async def test_concurrent_builds_with_a_hanging_llm_all_come_back(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama, styled: None
) -> None:
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b", timeout_s=FAST)
    ollama.mode = "hang"
    started = time.monotonic()
    results = await asyncio.gather(
        *(build(nc, f"a lighthouse number {i}", styles=["frame"], enhance=True) for i in range(20))
    )
    assert time.monotonic() - started < FAST + 2.5
    assert [r.positive for r in results] == [
        f"framed picture of a lighthouse number {i}, gold frame" for i in range(20)
    ]
    assert all(not r.enhanced for r in results)


async def test_the_llm_health_check_asks_the_server_and_says_what_is_wrong(
    service: ServiceProcess, nc: NatsClient, ollama: RecordingOllama
) -> None:
    from contracts.messages.health import HealthRequest

    async def llm_check() -> tuple[bool, object]:
        reply = await call(nc, endpoints.health("prompt"), HealthRequest())
        return reply.ok, next(c for c in reply.checks if c.name == "llm")

    ollama.models = ["llama3.2:3b"]
    await save_llm(nc, base_url=ollama.url, model="llama3.2:3b")
    healthy, check = await llm_check()
    assert healthy and check.ok and "llama3.2:3b" in check.detail

    await save_llm(nc, base_url=ollama.url, model="qwen2.5:7b")  # a model the server does not have
    healthy, check = await llm_check()
    assert healthy and not check.ok and check.optional  # the service still builds prompts
    assert "no model 'qwen2.5:7b'" in check.detail and "llama3.2:3b" in check.detail

    down = ollama.url
    await ollama.go_down()  # as when Ollama is not running
    try:
        healthy, check = await llm_check()
        assert healthy and not check.ok and "cannot be reached" in check.detail and down.split("//")[1] in check.detail
    finally:
        await save_llm(nc, base_url=down, model="")
