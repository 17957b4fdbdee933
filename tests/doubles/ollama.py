"""An Ollama test double: a real aiohttp server that speaks Ollama's native API and its OpenAI-compatible API.

Shapes, field names, status codes and error wording follow Ollama itself:
- docs/api.md (ollama/ollama): /api/generate, /api/chat, /api/tags, /api/ps, streaming NDJSON versus
  "stream": false, the timing fields of the final message, load/unload replies to an empty request;
- docs/api/errors.mdx and docs/api/streaming.mdx: {"error": "..."} bodies, 400/404/500, application/x-ndjson;
- server/routes.go: GET /api/version {"version": ...}, 404 "model 'x' not found" on /api/chat and
  /api/generate, 400 "model is required" on /api/chat, gin's "404 page not found", "405 method not allowed";
- api/types.go: ListModelResponse, ProcessModelResponse, ModelDetails, Metrics;
- openai/openai.go and middleware/openai.go: /v1/chat/completions (chat.completion, chat.completion.chunk,
  "data: [DONE]", system_fingerprint "fp_ollama"), /v1/models, and the error shape
  {"error": {"message", "type", "param", "code"}}, type invalid_request_error / not_found_error / api_error.

Usable in-process (``async with OllamaDouble() as ollama: ...``) or standalone:
``python tests/doubles/ollama.py --port 11434`` serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web

try:
    from doubles.served import Served, serve_until_signalled
except ImportError:  # run as a script: tests/doubles itself is sys.path[0]
    from served import Served, serve_until_signalled

Mode = Literal["ok", "error", "garbage", "empty", "hang"]
FaultScope = Literal["inference", "all"]
Message = dict[str, Any]
ReplyFn = Callable[[list[Message]], str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MODELS = ("llama3.2:3b", "qwen2.5:7b")
INFERENCE_PATHS = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions"})
KNOWN_PATHS = frozenset({"/api/tags", "/api/version", "/api/ps", "/v1/models", *INFERENCE_PATHS})

# Content types as Ollama (gin) writes them.
JSON_CT = "application/json; charset=utf-8"
NDJSON_CT = "application/x-ndjson"
SSE_CT = "text/event-stream"
TEXT_CT = "text/plain; charset=utf-8"

# Ollama's default keep_alive is 5m; a negative one keeps the model loaded "forever".
DEFAULT_KEEP_ALIVE_S = 300.0
FOREVER = timedelta(days=365 * 200)
_DURATION_PART = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# The parsed JSON body of a request and the 400 message Ollama would give if it is not a JSON object.
_BODY: web.RequestKey[tuple[dict[str, Any], str | None]] = web.RequestKey("ollama_double_body")

# A fixed modification time keeps /api/tags and /v1/models byte-for-byte stable between runs.
MODIFIED_AT = datetime(2025, 1, 15, 9, 30, 0, 123456, tzinfo=UTC)


@dataclass(frozen=True)
class _Out:
    """What a handler wants sent; kept as pieces so that "garbage" mode can cut a body or a stream short."""

    status: int
    content_type: str
    chunks: list[bytes] = field(default_factory=list)
    streamed: bool = False


@dataclass(frozen=True)
class _Usage:
    prompt_tokens: int
    completion_tokens: int

    def metrics(self) -> dict[str, int]:
        """Ollama's timing fields, in nanoseconds, derived from token counts so they are stable and > 0."""
        load = 15_000_000
        prompt_eval = self.prompt_tokens * 2_000_000
        evaluation = self.completion_tokens * 25_000_000
        return {
            "total_duration": load + prompt_eval + evaluation + 1_000_000,
            "load_duration": load,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": prompt_eval,
            "eval_count": self.completion_tokens,
            "eval_duration": evaluation,
        }

    def openai(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


def default_reply(messages: list[Message]) -> str:
    """A deterministic "enhanced prompt" that keeps the user's subject, so tests can look for it."""
    user_texts = [m["content"] for m in messages if m.get("role") == "user" and m.get("content")]
    if not user_texts:
        return "A detailed, cinematic rendering, soft light, high detail"
    return f"A detailed, cinematic rendering of {user_texts[-1]}, soft light, high detail"


class OllamaDouble(Served):
    """A fake Ollama on 127.0.0.1 whose failures are switched at run time through plain attributes."""

    def __init__(self, *, models: Sequence[str] | None = None, reply: str | ReplyFn | None = None) -> None:
        self.models: list[str] = list(DEFAULT_MODELS if models is None else models)
        self.reply: str | ReplyFn | None = reply
        self.delay_seconds: float = 0.0
        self.mode: Mode = "ok"
        # Faults hit only /api/chat, /api/generate and /v1/chat/completions by default, as when a model
        # crashes while the server still lists its models; "all" also breaks the listing endpoints.
        self.fault_scope: FaultScope = "inference"
        self.error_message: str = "the model failed to generate a response"
        # Older Ollama answered a missing model with this wording (its scheduler still does).
        self.legacy_not_found_wording: bool = False
        self.version: str = "0.13.5"
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._loaded: dict[str, datetime] = {}
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._next_completion_id = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("OllamaDouble is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("OllamaDouble is not started")
        return self._port

    async def start(self, port: int = 0) -> None:
        await self._listen(port)

    async def stop(self) -> None:
        await self._close()

    async def go_down(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        await self._close()

    async def go_up(self) -> None:
        """Listen again on the port used before go_down()."""
        if self._runner is not None:
            return
        await self._listen(self.port)

    async def _listen(self, port: int) -> None:
        self._released = asyncio.Event()
        # A short shutdown timeout so that stop()/go_down() never wait on a slow client.
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def _close(self) -> None:
        # Wake handlers parked by "hang" or a delay first, otherwise cleanup would wait for them.
        self._released.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _build_app(self) -> web.Application:
        # aiohttp takes a bound method for an old-style middleware factory, hence the marked closure.
        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._faults(request, handler)

        app = web.Application(middlewares=[faults])
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_get("/v1/models", self._openai_models)
        app.router.add_route("*", "/{tail:.*}", self._unrouted)
        return app

    # ------------------------------------------------------------------ faults and sending

    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body, error = await _read_body(request)
        self.requests.append((request.path, body))
        request[_BODY] = (body, error)
        if not self._faulted(request.path):
            return await handler(request)
        if self.delay_seconds > 0:
            await self._park(self.delay_seconds)
        if self.mode == "hang":
            await self._park(None)
            return await self._send(request, _error_out(request.path, 503, "server shutting down"))
        if self.mode == "error":
            return await self._send(request, _error_out(request.path, 500, self.error_message))
        return await handler(request)

    def _faulted(self, path: str) -> bool:
        return self.fault_scope == "all" or path in INFERENCE_PATHS

    async def _park(self, seconds: float | None) -> None:
        """Sleep, but wake up early when the server stops or goes down."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), seconds)

    async def _send(self, request: web.Request, out: _Out) -> web.StreamResponse:
        chunks = out.chunks
        if self.mode == "garbage" and out.status == 200 and self._faulted(request.path):
            chunks = _truncated(chunks)
        headers = {"Content-Type": out.content_type}
        if not out.streamed:
            return web.Response(status=out.status, body=b"".join(chunks), headers=headers)
        response = web.StreamResponse(status=out.status, headers=headers)
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ model bookkeeping

    def _installed(self, name: str) -> str | None:
        """The listed name of an installed model; Ollama matches case-insensitively and defaults the tag."""
        wanted = _canonical(name)
        return next((m for m in self.models if _canonical(m) == wanted), None)

    def _not_found(self, name: str) -> str:
        if self.legacy_not_found_wording:
            return f"model {json.dumps(name)} not found, try pulling it first"
        return f"model '{name}' not found"

    def _mark_loaded(self, model: str, keep_alive: object) -> None:
        seconds = _keep_alive_seconds(keep_alive)
        if seconds == 0:
            self._loaded.pop(model, None)
            return
        ttl = FOREVER if seconds < 0 else timedelta(seconds=seconds)
        self._loaded[model] = datetime.now(UTC) + ttl

    def _reply_text(self, messages: list[Message]) -> str:
        if self.mode == "empty":
            return ""
        if callable(self.reply):
            return self.reply(messages)
        if isinstance(self.reply, str):
            return self.reply
        return default_reply(messages)

    # ------------------------------------------------------------------ native API

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        models = [_model_entry(name) for name in self.models]
        return await self._send(request, _json_out(200, {"models": models}))

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, _json_out(200, {"version": self.version}))

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        now = datetime.now(UTC)
        self._loaded = {name: expiry for name, expiry in self._loaded.items() if expiry > now}
        running = [_running_entry(name, expiry) for name, expiry in self._loaded.items()]
        return await self._send(request, _json_out(200, {"models": running}))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, error = request[_BODY]
        if error is not None:
            return await self._send(request, _json_out(400, {"error": error}))
        model = str(body.get("model") or "")
        if not model:
            return await self._send(request, _json_out(400, {"error": "model is required"}))
        installed = self._installed(model)
        if installed is None:
            return await self._send(request, _json_out(404, {"error": self._not_found(model)}))
        messages = _normalized(body.get("messages"))
        if not messages:
            return await self._send(request, self._load_or_unload(installed, model, body, _chat_field))
        return await self._complete(request, installed, model, messages, _chat_field, {})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, error = request[_BODY]
        if error is not None:
            return await self._send(request, _json_out(400, {"error": error}))
        model = str(body.get("model") or "")
        installed = self._installed(model)
        if installed is None:
            return await self._send(request, _json_out(404, {"error": self._not_found(model)}))
        prompt = str(body.get("prompt") or "")
        if not prompt:
            return await self._send(request, self._load_or_unload(installed, model, body, _generate_field))
        messages = ([{"role": "system", "content": str(body["system"])}] if body.get("system") else []) + [
            {"role": "user", "content": prompt}
        ]
        # The deprecated "context" token list comes back unless the request is raw, as in Ollama.
        extra = {} if body.get("raw") else {"context": list(range(1, len(prompt.split()) + 2))}
        return await self._complete(request, installed, model, messages, _generate_field, extra)

    def _load_or_unload(self, installed: str, model: str, body: dict[str, Any], content: _Field) -> _Out:
        """Ollama's reply to an empty prompt: load the model, or unload it when keep_alive is 0."""
        self._mark_loaded(installed, body.get("keep_alive"))
        reason = "unload" if _keep_alive_seconds(body.get("keep_alive")) == 0 else "load"
        reply = {"model": model, "created_at": _now(), **content(""), "done": True, "done_reason": reason}
        return _json_out(200, reply)

    async def _complete(
        self,
        request: web.Request,
        installed: str,
        model: str,
        messages: list[Message],
        content: _Field,
        extra_done: dict[str, Any],
    ) -> web.StreamResponse:
        body = request[_BODY][0]
        pieces = _pieces(self._reply_text(messages))
        usage = _Usage(_count_tokens(messages), max(1, len(pieces)))
        self._mark_loaded(installed, body.get("keep_alive"))
        stream = body.get("stream", True) is not False
        done = {
            "model": model,
            "created_at": _now(),
            **content("" if stream else "".join(pieces)),
            "done": True,
            "done_reason": "stop",
            **usage.metrics(),
            **extra_done,
        }
        if not stream:
            return await self._send(request, _json_out(200, done))
        parts = [{"model": model, "created_at": _now(), **content(p), "done": False} for p in pieces]
        lines = [_dumps(obj) + b"\n" for obj in [*parts, done]]
        return await self._send(request, _Out(200, NDJSON_CT, lines, streamed=True))

    # ------------------------------------------------------------------ OpenAI-compatible API

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body, error = request[_BODY]
        if error is not None:
            return await self._send(request, _openai_error(400, error))
        messages = _normalized(body.get("messages"))
        if not messages:
            return await self._send(request, _openai_error(400, "[] is too short - 'messages'"))
        model = str(body.get("model") or "")
        if not model:
            return await self._send(request, _openai_error(400, "model is required"))
        installed = self._installed(model)
        if installed is None:
            return await self._send(request, _openai_error(404, self._not_found(model)))
        pieces = _pieces(self._reply_text(messages))
        usage = _Usage(_count_tokens(messages), max(1, len(pieces)))
        self._mark_loaded(installed, None)
        self._next_completion_id += 1
        completion_id = f"chatcmpl-{self._next_completion_id % 1000}"
        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            out = _openai_stream(completion_id, model, pieces, usage if include_usage else None)
        else:
            out = _json_out(200, _openai_completion(completion_id, model, "".join(pieces), usage), "application/json")
        return await self._send(request, out)

    async def _openai_models(self, request: web.Request) -> web.StreamResponse:
        models = [_openai_model(name) for name in self.models]
        # Ollama builds this list from a nil Go slice, so no models at all reads "data": null.
        listing = {"object": "list", "data": models or None}
        return await self._send(request, _json_out(200, listing, "application/json"))

    async def _unrouted(self, request: web.Request) -> web.StreamResponse:
        if request.path in KNOWN_PATHS:
            return web.Response(status=405, text="405 method not allowed", content_type="text/plain")
        return web.Response(status=404, text="404 page not found", content_type="text/plain")


_Field = Callable[[str], dict[str, Any]]


def _chat_field(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


def _generate_field(text: str) -> dict[str, Any]:
    return {"response": text}


# ---------------------------------------------------------------------- pure helpers


def _now() -> str:
    """Go's time.Time in UTC as JSON: RFC 3339 with fractional seconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: object) -> bytes:
    # Compact like Go's json.Marshal; UTF-8 passes through unescaped as it does there.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json_out(status: int, obj: object, content_type: str = JSON_CT) -> _Out:
    return _Out(status, content_type, [_dumps(obj)])


def _openai_error(status: int, message: str) -> _Out:
    kinds = {400: "invalid_request_error", 404: "not_found_error"}
    error = {"message": message, "type": kinds.get(status, "api_error"), "param": None, "code": None}
    return _json_out(status, {"error": error}, "application/json")


def _error_out(path: str, status: int, message: str) -> _Out:
    if path.startswith("/v1/"):
        return _openai_error(status, message)
    return _json_out(status, {"error": message})


def _truncated(chunks: list[bytes]) -> list[bytes]:
    """Keep the first piece of a stream whole and cut the next one in half; a single body is cut in half."""
    if len(chunks) >= 2:
        return [chunks[0], chunks[1][: len(chunks[1]) // 2]]
    if chunks:
        return [chunks[0][: max(1, len(chunks[0]) // 2)]]
    return chunks


async def _read_body(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """The JSON object sent with a POST, and the error Ollama would answer if it is not one."""
    if request.method != "POST":
        return {}, None
    raw = await request.read()
    if not raw.strip():
        return {}, "missing request body"
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        return {}, f"invalid JSON: {exc}"
    if not isinstance(parsed, dict):
        return {}, f"invalid JSON: expected an object, got {type(parsed).__name__}"
    return parsed, None


def _text_of(content: object) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(t for t in texts if isinstance(t, str))
    return ""


def _normalized(messages: object) -> list[Message]:
    if not isinstance(messages, list):
        return []
    return [
        {"role": str(m.get("role", "")), "content": _text_of(m.get("content"))} for m in messages if isinstance(m, dict)
    ]


def _pieces(text: str) -> list[str]:
    """Word-sized stream chunks that join back to exactly the reply."""
    return re.findall(r"\s*\S+|\s+$", text)


def _count_tokens(messages: list[Message]) -> int:
    return max(1, sum(len(m["content"].split()) for m in messages))


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _keep_alive_seconds(value: object) -> float:
    """Seconds from Ollama's keep_alive: a number of seconds or a Go duration such as "10m" or "1h30m"."""
    if value is None or isinstance(value, bool):
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return DEFAULT_KEEP_ALIVE_S
    text = value.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return DEFAULT_KEEP_ALIVE_S


def _parameter_billions(name: str) -> float:
    tag = name.rsplit(":", 1)[1] if ":" in name else ""
    match = re.search(r"(\d+(?:\.\d+)?)b", tag.lower())
    return float(match.group(1)) if match else 7.0


def _model_details(name: str) -> dict[str, Any]:
    base = name.rsplit("/", 1)[-1].split(":")[0].lower()
    family_match = re.match(r"[a-z]+", base)
    family = family_match.group(0) if family_match else "llama"
    billions = _parameter_billions(name)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{billions:g}B",
        "quantization_level": "Q4_K_M",
    }


def _model_size(name: str) -> int:
    # About 0.6 bytes a parameter, what a Q4_K_M GGUF weighs.
    return int(_parameter_billions(name) * 600_000_000)


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _rfc3339(MODIFIED_AT),
        "size": _model_size(name),
        "digest": _digest(name),
        "details": _model_details(name),
    }


def _running_entry(name: str, expires_at: datetime) -> dict[str, Any]:
    size = _model_size(name)
    return {
        "name": name,
        "model": name,
        "size": size,
        "digest": _digest(name),
        "details": _model_details(name),
        "expires_at": _rfc3339(expires_at),
        "size_vram": size,
        "context_length": 4096,
    }


def _openai_model(name: str) -> dict[str, Any]:
    # owned_by is the name's namespace, "library" when it has none.
    namespace = name.split("/")[-2] if "/" in name else "library"
    return {"id": name, "object": "model", "created": int(MODIFIED_AT.timestamp()), "owned_by": namespace}


def _openai_completion(completion_id: str, model: str, text: str, usage: _Usage) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {**_openai_chunk(completion_id, model, [choice], "chat.completion"), "usage": usage.openai()}


def _openai_chunk(
    completion_id: str, model: str, choices: list[dict[str, Any]], kind: str = "chat.completion.chunk"
) -> dict[str, Any]:
    """A chat completion (`kind` "chat.completion") or one chunk of a streamed one, as Ollama's OpenAI API sends it."""
    return {
        "id": completion_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": choices,
    }


def _openai_stream(completion_id: str, model: str, pieces: list[str], usage: _Usage | None) -> _Out:
    """SSE chunks as Ollama sends them: one a token, a last one with finish_reason, usage if asked, [DONE]."""
    chunks = [
        _openai_chunk(
            completion_id,
            model,
            [{"index": 0, "delta": {"role": "assistant", "content": p}, "finish_reason": None}],
        )
        for p in pieces
    ]
    final = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
    chunks.append(_openai_chunk(completion_id, model, [final]))
    if usage is not None:
        chunks.append({**_openai_chunk(completion_id, model, []), "usage": usage.openai()})
    frames = [b"data: " + _dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    return _Out(200, SSE_CT, frames, streamed=True)


# ---------------------------------------------------------------------- standalone


async def _serve(port: int, models: list[str] | None) -> None:
    await serve_until_signalled(OllamaDouble(models=models), port, "ollama double")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the Ollama test double until SIGTERM.")
    parser.add_argument("--port", type=int, default=11434, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--model", action="append", dest="models", help="an installed model (repeatable)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.models))


if __name__ == "__main__":
    main()
