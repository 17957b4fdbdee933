"""The Ollama test double answers over real sockets with Ollama's shapes, and fails on demand."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from doubles.ollama import OllamaDouble

MODEL = "llama3.2:3b"
USER_TEXT = "a red fox in a snowy forest"
TIMING_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
DOUBLE_SCRIPT = Path(__file__).resolve().parents[1] / "doubles" / "ollama.py"


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaDouble]:
    async with OllamaDouble() as double:
        yield double


@pytest.fixture
async def client(ollama: OllamaDouble) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ollama.url, timeout=5.0) as http:
        yield http


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": USER_TEXT}], **extra}


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sse_payloads(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_timings(message: dict[str, Any]) -> None:
    for name in TIMING_FIELDS:
        assert isinstance(message[name], int), name
        assert message[name] > 0, name
    parts = message["load_duration"] + message["prompt_eval_duration"] + message["eval_duration"]
    assert message["total_duration"] >= parts


# ---------------------------------------------------------------------- listing endpoints


async def test_tags_lists_each_model_with_ollama_fields(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tags")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    models = response.json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:3b", "qwen2.5:7b"]
    for entry in models:
        assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert entry["model"] == entry["name"]
        assert parse_time(entry["modified_at"]).tzinfo is not None
        assert isinstance(entry["size"], int)
        assert entry["size"] > 0
        assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
        details = entry["details"]
        assert set(details) == {
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        }
        assert details["format"] == "gguf"
        assert isinstance(details["families"], list)
        assert all(isinstance(details[k], str) for k in ("family", "parameter_size", "quantization_level"))
    assert models[0]["details"]["parameter_size"] == "3B"


async def test_tags_follow_the_models_given() -> None:
    async with OllamaDouble(models=["mistral:7b"]) as double, httpx.AsyncClient(base_url=double.url) as http:
        names = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
    assert names == ["mistral:7b"]


async def test_version_is_a_version_string(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/version")
    assert response.status_code == 200
    assert set(response.json()) == {"version"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", response.json()["version"])


async def test_ps_lists_a_used_model_until_keep_alive_zero_unloads_it(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/ps")).json() == {"models": []}
    await client.post("/api/chat", json=chat_body(stream=False, keep_alive="10m"))
    running = (await client.get("/api/ps")).json()["models"]
    assert [m["name"] for m in running] == [MODEL]
    entry = running[0]
    assert {"name", "model", "size", "digest", "details", "expires_at", "size_vram"} <= set(entry)
    remaining = parse_time(entry["expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=9) < remaining <= timedelta(minutes=10)

    unload = await client.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert (await client.get("/api/ps")).json() == {"models": []}


async def test_empty_chat_loads_the_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"model": MODEL, "messages": []})
    body = response.json()
    assert body["done"] is True
    assert body["done_reason"] == "load"
    assert body["message"] == {"role": "assistant", "content": ""}


async def test_openai_models_list(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["llama3.2:3b", "qwen2.5:7b"]
    for entry in listing["data"]:
        assert set(entry) == {"id", "object", "created", "owned_by"}
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert entry["owned_by"] == "library"


# ---------------------------------------------------------------------- /api/chat and /api/generate


async def test_chat_without_streaming_is_one_json_object(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json=chat_body(stream=False))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["model"] == MODEL
    assert parse_time(body["created_at"]).tzinfo is not None
    assert body["message"]["role"] == "assistant"
    assert USER_TEXT in body["message"]["content"]
    assert body["message"]["content"] != USER_TEXT
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    assert_timings(body)


async def test_chat_streams_ndjson_by_default(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json=chat_body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    chunks = ndjson(response)
    assert len(chunks) > 2
    *parts, final = chunks
    assert all(c["done"] is False and set(c) == {"model", "created_at", "message", "done"} for c in parts)
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert_timings(final)
    assert final["eval_count"] == len(parts)
    whole = (await client.post("/api/chat", json=chat_body(stream=False))).json()["message"]["content"]
    assert "".join(c["message"]["content"] for c in parts) == whole


async def test_generate_without_streaming_carries_response_and_context(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/generate", json={"model": MODEL, "prompt": USER_TEXT, "stream": False})
    assert response.status_code == 200
    body = response.json()
    assert USER_TEXT in body["response"]
    assert "message" not in body
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    assert isinstance(body["context"], list)
    assert all(isinstance(t, int) for t in body["context"])
    assert_timings(body)


async def test_generate_streams_response_pieces(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/generate", json={"model": MODEL, "prompt": USER_TEXT})
    assert response.headers["content-type"] == "application/x-ndjson"
    *parts, final = ndjson(response)
    assert parts
    assert all(c["done"] is False for c in parts)
    assert USER_TEXT in "".join(c["response"] for c in parts)
    assert final["response"] == ""
    assert final["done"] is True
    assert_timings(final)


async def test_a_fixed_reply_string() -> None:
    async with OllamaDouble(reply="a fixed prompt") as double, httpx.AsyncClient(base_url=double.url) as http:
        response = await http.post("/api/chat", json=chat_body(stream=False))
    assert response.json()["message"]["content"] == "a fixed prompt"


async def test_a_reply_function_sees_the_messages() -> None:
    seen: list[list[dict[str, Any]]] = []

    def reply(messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        return messages[-1]["content"].upper()

    async with OllamaDouble(reply=reply) as double, httpx.AsyncClient(base_url=double.url) as http:
        system = {"role": "system", "content": "Rewrite prompts."}
        body = {"model": MODEL, "messages": [system, {"role": "user", "content": "a cat"}], "stream": False}
        chat = await http.post("/api/chat", json=body)
        generate = await http.post(
            "/api/generate", json={"model": MODEL, "prompt": "a dog", "system": "Be brief.", "stream": False}
        )
    assert chat.json()["message"]["content"] == "A CAT"
    assert generate.json()["response"] == "A DOG"
    assert seen[0] == [system, {"role": "user", "content": "a cat"}]
    assert seen[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a dog"}]


async def test_unknown_model_is_404_with_ollama_wording(client: httpx.AsyncClient) -> None:
    chat = await client.post("/api/chat", json={**chat_body(), "model": "nope:1b"})
    generate = await client.post("/api/generate", json={"model": "nope:1b", "prompt": "x"})
    for response in (chat, generate):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"error": "model 'nope:1b' not found"}


async def test_unknown_model_in_the_older_wording(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.legacy_not_found_wording = True
    response = await client.post("/api/chat", json={**chat_body(), "model": "nope:1b"})
    assert response.status_code == 404
    assert response.json() == {"error": 'model "nope:1b" not found, try pulling it first'}


async def test_model_names_match_like_ollama(client: httpx.AsyncClient) -> None:
    async with OllamaDouble(models=["mistral"]) as double, httpx.AsyncClient(base_url=double.url) as http:
        response = await http.post("/api/chat", json={**chat_body(stream=False), "model": "Mistral:latest"})
    assert response.status_code == 200
    assert response.json()["model"] == "Mistral:latest"


async def test_chat_without_model_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json() == {"error": "model is required"}


async def test_bad_request_bodies_are_400(client: httpx.AsyncClient) -> None:
    empty = await client.post("/api/chat", content=b"")
    broken = await client.post("/api/chat", content=b"{not json", headers={"Content-Type": "application/json"})
    assert empty.status_code == 400
    assert empty.json() == {"error": "missing request body"}
    assert broken.status_code == 400
    assert isinstance(broken.json()["error"], str)


async def test_unknown_paths_and_methods_answer_like_gin(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nothing")
    wrong_method = await client.get("/api/chat")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert (wrong_method.status_code, wrong_method.text) == (405, "405 method not allowed")


# ---------------------------------------------------------------------- /v1/chat/completions


async def test_openai_chat_completion(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(temperature=0.2))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    assert body["system_fingerprint"] == "fp_ollama"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert USER_TEXT in choice["message"]["content"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_openai_content_parts_are_read_as_text(client: httpx.AsyncClient) -> None:
    parts = [{"type": "text", "text": "a lighthouse"}, {"type": "text", "text": "at dusk"}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert "a lighthouse at dusk" in response.json()["choices"][0]["message"]["content"]


async def test_openai_stream_is_sse_ending_with_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert all(line.startswith("data: ") for line in response.text.splitlines() if line)
    *payloads, last = sse_payloads(response)
    assert last == "[DONE]"
    chunks = [json.loads(p) for p in payloads]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    *deltas, final = chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in deltas)
    assert final["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"]["content"] for c in deltas)
    whole = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert text == whole["choices"][0]["message"]["content"]
    assert "usage" not in final


async def test_openai_stream_usage_chunk_when_asked(client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    *payloads, last = sse_payloads(await client.post("/v1/chat/completions", json=body))
    usage_chunk = json.loads(payloads[-1])
    assert last == "[DONE]"
    assert usage_chunk["choices"] == []
    assert set(usage_chunk["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


async def test_openai_errors_have_the_openai_shape(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/chat/completions", json={**chat_body(), "model": "nope:1b"})
    no_messages = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "model 'nope:1b' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------------- modes


async def test_error_mode_is_500_with_an_error_body(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.mode = "error"
    native = await client.post("/api/chat", json=chat_body())
    openai = await client.post("/v1/chat/completions", json=chat_body())
    tags = await client.get("/api/tags")
    assert native.status_code == 500
    assert native.json() == {"error": ollama.error_message}
    assert openai.status_code == 500
    assert openai.json()["error"]["type"] == "api_error"
    assert openai.json()["error"]["message"] == ollama.error_message
    # The server itself still lists its models, as when only the model runner fails.
    assert tags.status_code == 200

    ollama.mode = "ok"
    assert (await client.post("/api/chat", json=chat_body(stream=False))).status_code == 200


async def test_fault_scope_all_breaks_listing_too(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.mode = "error"
    ollama.fault_scope = "all"
    assert (await client.get("/api/tags")).status_code == 500
    assert (await client.get("/v1/models")).json()["error"]["type"] == "api_error"


async def test_garbage_mode_sends_200_with_broken_json(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.mode = "garbage"
    single = await client.post("/api/chat", json=chat_body(stream=False))
    assert single.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(single.text)

    streamed = await client.post("/api/chat", json=chat_body())
    first, *rest = streamed.text.splitlines()
    assert json.loads(first)["done"] is False
    with pytest.raises(json.JSONDecodeError):
        json.loads(rest[-1])

    sse = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert sse.status_code == 200
    assert "[DONE]" not in sse.text


async def test_empty_mode_is_well_formed_with_empty_content(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.mode = "empty"
    native = (await client.post("/api/chat", json=chat_body(stream=False))).json()
    assert native["message"] == {"role": "assistant", "content": ""}
    assert native["done"] is True
    assert_timings(native)
    streamed = ndjson(await client.post("/api/chat", json=chat_body()))
    assert [c["message"]["content"] for c in streamed] == [""]
    assert streamed[-1]["done"] is True
    openai = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert openai["choices"][0]["message"]["content"] == ""


async def test_hang_mode_never_answers(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.mode = "hang"
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/api/chat", json=chat_body(), timeout=0.3)
    assert time.monotonic() - started >= 0.3
    # Listing still answers in the default fault scope.
    assert (await client.get("/api/version", timeout=0.3)).status_code == 200


async def test_stop_releases_a_hanging_request_at_once(ollama: OllamaDouble) -> None:
    ollama.mode = "hang"
    async with httpx.AsyncClient(base_url=ollama.url, timeout=5.0) as http:
        pending = asyncio.create_task(http.post("/api/chat", json=chat_body()))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done
        assert [path for path, _ in ollama.requests] == ["/api/chat"]
        started = time.monotonic()
        await ollama.stop()
        assert time.monotonic() - started < 1.0
        # Either the 503 sent on release or a closed connection; never the 5 s client timeout.
        outcome = await asyncio.gather(pending, return_exceptions=True)
    assert time.monotonic() - started < 1.5
    response = outcome[0]
    assert not isinstance(response, httpx.TimeoutException)
    if isinstance(response, httpx.Response):
        assert response.status_code == 503


async def test_delay_answers_late(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.delay_seconds = 0.3
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/api/chat", json=chat_body(stream=False), timeout=0.1)
    started = time.monotonic()
    response = await client.post("/api/chat", json=chat_body(stream=False), timeout=2.0)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert USER_TEXT in response.json()["message"]["content"]


# ---------------------------------------------------------------------- down and up


async def test_go_down_refuses_connections_and_go_up_listens_again(
    ollama: OllamaDouble, client: httpx.AsyncClient
) -> None:
    url = ollama.url
    # A pooled keep-alive connection exists now; going down must close it too.
    assert (await client.get("/api/version")).status_code == 200
    await ollama.go_down()
    with pytest.raises(httpx.ConnectError):
        await client.get("/api/version")
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get("/api/tags")

    await ollama.go_up()
    assert ollama.url == url
    assert (await client.get("/api/version")).status_code == 200
    response = await client.post("/api/chat", json=chat_body(stream=False))
    assert USER_TEXT in response.json()["message"]["content"]


# ---------------------------------------------------------------------- recording


async def test_every_request_is_recorded_with_its_body(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    system = "You rewrite image prompts."
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": USER_TEXT}],
        "stream": False,
        "options": {"temperature": 0.7},
        "keep_alive": "30m",
    }
    await client.get("/api/tags")
    await client.post("/api/chat", json=body)
    await client.post("/v1/chat/completions", json=chat_body(temperature=0.1))
    assert [path for path, _ in ollama.requests] == ["/api/tags", "/api/chat", "/v1/chat/completions"]
    assert ollama.requests[0][1] == {}
    recorded = ollama.requests[1][1]
    assert recorded == body
    assert recorded["messages"][0]["content"] == system
    assert recorded["options"]["temperature"] == 0.7
    assert recorded["keep_alive"] == "30m"
    assert ollama.requests[2][1]["temperature"] == 0.1


async def test_requests_are_recorded_even_when_failing(ollama: OllamaDouble, client: httpx.AsyncClient) -> None:
    ollama.mode = "error"
    await client.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert ollama.requests == [("/api/generate", {"model": MODEL, "prompt": "x"})]


# ---------------------------------------------------------------------- standalone


def test_standalone_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, str(DOUBLE_SCRIPT), "--port", "0", "--model", "phi3:mini"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert match, banner
        tags = httpx.get(f"{match.group(0)}/api/tags", timeout=5.0).json()
        assert [m["name"] for m in tags["models"]] == ["phi3:mini"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5.0) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
