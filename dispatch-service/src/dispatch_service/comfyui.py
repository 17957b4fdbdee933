"""An asyncio client for one ComfyUI server: HTTP for everything, one WebSocket shared by its runs for live events.

Follows the protocol recorded from a real ComfyUI 0.3.64 (`tests/data/comfyui-0.3.64/README.md`) and uses the
newer `/api/jobs` routes (job status, cancel) when a server offers them. Every failure is mapped onto who is at
fault, so a dispatcher can act on the exception type alone:

* `ComfyUnavailable`: the instance (unreachable, 5xx, hanging, not a ComfyUI server, lost the prompt) -> fail over;
* `ComfyRejected`: the workflow failed validation -> failing elsewhere too, so do not retry;
* `ComfyExecutionFailed` / `ComfyInterrupted`: the prompt ran and a node raised / it was interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from dispatch_service.http11 import Http11Client, HttpConnectError, HttpError, HttpTimeoutError, Response
from dispatch_service.progress import ProgressUpdate, PromptProgress

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25  # /history and /queue polling while the WebSocket is gone or a cancel is landing
PROBE_TIMEOUT_S = 5.0  # upper bound for the "is the server still answering?" probes
QUIET_CANCEL_TIMEOUT_S = 2.0  # best-effort cleanup cancels must not hold up the caller for long
WS_MAX_FRAME_BYTES = 64 * 1024 * 1024  # preview frames are images; a bigger frame drops us to /history polling
USER_AGENT = "genimage-hub-dispatch"
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")
MAX_LISTED_OPTIONS = 12
# Binary WebSocket frames (ComfyUI's BinaryEventTypes): a 4-byte big-endian event type first.
BINARY_PREVIEW_IMAGE = 1  # then a 4-byte image format (1 JPEG, 2 PNG) and the image file
BINARY_PREVIEW_WITH_METADATA = 4  # then a 4-byte length N, N bytes of JSON metadata and the image file
IMAGE_FORMATS = {1: ("image/jpeg", "jpg"), 2: ("image/png", "png")}
# Output nodes whose images come only as binary frames while they execute (nothing in `/history` outputs).
WEBSOCKET_OUTPUT_CLASSES = frozenset({"SaveImageWebsocket"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MISSING_CLASS = re.compile(r"node (?P<cls>\S+) does not exist")


# --------------------------------------------------------------------------- errors


class ComfyError(Exception):
    """Base of every error of this client; str() is a clear message for a user or an admin."""


class ComfyUnavailable(ComfyError):  # noqa: N818 - names of the interface the dispatcher codes against
    """The instance is at fault: unreachable, timing out, 5xx, hanging, not ComfyUI, or it lost the prompt."""


class ComfyRejected(ComfyError):  # noqa: N818 - names of the interface the dispatcher codes against
    """The workflow is at fault: ComfyUI's validation refused it (nothing of it runs)."""

    def __init__(self, message: str, node_errors: dict[str, Any] | None = None, error: dict[str, Any] | None = None):
        super().__init__(message)
        self.node_errors: dict[str, Any] = node_errors or {}
        self.error: dict[str, Any] = error or {}


class ComfyExecutionFailed(ComfyError):  # noqa: N818 - names of the interface the dispatcher codes against
    """A node raised while the prompt ran (`execution_error`)."""

    def __init__(
        self,
        message: str,
        *,
        node_id: str,
        node_type: str,
        exception_type: str,
        exception_message: str = "",
        traceback: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback: list[str] = traceback or []


class ComfyInterrupted(ComfyError):  # noqa: N818 - names of the interface the dispatcher codes against
    """The prompt was interrupted (by our cancel or by someone else) or deleted from the queue before it ran."""

    def __init__(self, message: str, *, node_id: str | None = None, node_type: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type


class ComfyOutputMissing(ComfyError):  # noqa: N818 - names of the interface the dispatcher codes against
    """An output file the prompt reported is no longer on the instance (GET /view answered 404)."""


class ComfyNoOutputs(ComfyError):  # noqa: N818 - names of the interface the dispatcher codes against
    """The prompt succeeded but left nothing to collect: no file reported, no image sent over the WebSocket."""


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class OutputRef:
    """One file a node produced, as `executed` / history report it; fetch it with `open_output`."""

    node_id: str
    filename: str
    subfolder: str
    type: str  # "output", or "temp" for previews (PreviewImage)
    kind: str  # the key under the node's output: "images", "gifs", "videos", "audio", ...


@dataclass(frozen=True)
class WebSocketImage:
    """An image an output node sent as a binary WebSocket frame (SaveImageWebsocket): the bytes themselves."""

    node_id: str
    data: bytes
    content_type: str
    extension: str


@dataclass(frozen=True)
class RunResult:
    prompt_id: str
    outputs: list[OutputRef]
    cached_nodes: list[str]
    images: list[WebSocketImage] = field(default_factory=list)  # sent over the WebSocket, in arrival order
    # Seconds each node that ran took, from its `executing` message to the next (empty when the result came from
    # the history, the WebSocket lost): what a model loader node took is the time its model switch cost. A
    # measurement, not part of the outcome: results compare equal without it.
    node_seconds: dict[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SystemInfo:
    comfyui_version: str | None
    device_name: str | None
    device_type: str | None
    vram_total: int | None
    vram_free: int | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class QueueState:
    running: list[str]
    pending: list[str]  # in the order they will run


class OutputStream:
    """An output file being downloaded: metadata from the headers, the body via `chunks()` (never buffered)."""

    def __init__(self, response: Response, ref: OutputRef, instance: str) -> None:
        self._response = response
        self._instance = instance
        self.filename = ref.filename
        self.content_type: str = response.headers.get("content-type", "application/octet-stream")
        length = response.headers.get("content-length")
        self.size: int | None = int(length) if length is not None and length.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except HttpError as exc:
            raise ComfyUnavailable(
                f"ComfyUI at {self._instance}: the download of output {self.filename!r} broke off: {_cause(exc)}"
            ) from exc


# --------------------------------------------------------------------------- parsers (pure, tested on recordings)


def parse_system_stats(body: Any) -> SystemInfo:
    """`GET /system_stats`; ValueError when the body is not ComfyUI's shape."""
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("system"), dict)
        or not isinstance(body.get("devices"), list)
    ):
        raise ValueError("expected a JSON object with 'system' and 'devices'")
    system = body["system"]
    devices = [device for device in body["devices"] if isinstance(device, dict)]
    device = devices[0] if devices else {}
    return SystemInfo(
        comfyui_version=_str_or_none(system.get("comfyui_version")),
        device_name=_str_or_none(device.get("name")),
        device_type=_str_or_none(device.get("type")),
        vram_total=_int_or_none(device.get("vram_total")),
        vram_free=_int_or_none(device.get("vram_free")),
        raw=body,
    )


def parse_queue(body: Any) -> QueueState:
    """`GET /queue`: prompt ids; pending ones sorted into run order (ComfyUI sends them in heap order)."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object with 'queue_running' and 'queue_pending'")
    running, pending = body.get("queue_running"), body.get("queue_pending")
    if not isinstance(running, list) or not isinstance(pending, list):
        raise ValueError("expected 'queue_running' and 'queue_pending' lists")
    running_items, pending_items = _queue_items(running), _queue_items(pending)
    with contextlib.suppress(TypeError):  # a non-numeric `number` keeps the server's order
        pending_items.sort(key=lambda item: (item[0], item[1]))
    return QueueState(running=[item[1] for item in running_items], pending=[item[1] for item in pending_items])


def _queue_items(items: list[Any]) -> list[tuple[Any, str]]:
    out = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) < 2 or not isinstance(item[1], str):
            raise ValueError("a queue entry is not [number, prompt_id, ...]")
        out.append((item[0], item[1]))
    return out


def parse_outputs(node_id: str, output: Any) -> list[OutputRef]:
    """File outputs of one node: every list of {filename, subfolder, type} items (images, gifs, videos, audio...)."""
    if not isinstance(output, dict):
        return []
    refs = []
    for kind, items in output.items():
        if not isinstance(items, list):
            continue
        for item in items:  # `text` (strings) and `animated` (booleans) are no files
            if isinstance(item, dict) and isinstance(item.get("filename"), str) and item["filename"]:
                subfolder = item.get("subfolder")
                kind_of_file = item.get("type")
                refs.append(
                    OutputRef(
                        node_id=str(node_id),
                        filename=item["filename"],
                        subfolder=subfolder if isinstance(subfolder, str) else "",
                        type=kind_of_file if isinstance(kind_of_file, str) and kind_of_file else "output",
                        kind=str(kind),
                    )
                )
    return refs


def parse_binary_image(frame: bytes) -> tuple[str | None, str | None, str, bytes] | None:
    """(prompt id, node id, content type, image bytes) of an image frame (type 1 or 4), else None.

    Type 1 says only the format (no prompt or node); type 4 (after the feature-flag handshake) carries them in
    its JSON metadata. Types 2 (server-internal) and 3 (progress text) are no images.
    """
    if len(frame) < 8:
        return None
    kind, word = int.from_bytes(frame[:4], "big"), int.from_bytes(frame[4:8], "big")
    if kind == BINARY_PREVIEW_IMAGE:
        content_type = IMAGE_FORMATS.get(word, ("application/octet-stream", "bin"))[0]
        return None, None, content_type, frame[8:]
    if kind == BINARY_PREVIEW_WITH_METADATA and 8 + word <= len(frame):
        try:
            metadata = msgspec.json.decode(frame[8 : 8 + word])
        except msgspec.DecodeError:
            return None
        if not isinstance(metadata, dict):
            return None
        image_type = metadata.get("image_type")
        return (
            _str_or_none(metadata.get("prompt_id")),
            _str_or_none(metadata.get("node_id")),
            image_type if isinstance(image_type, str) else "application/octet-stream",
            frame[8 + word :],
        )
    return None


def output_nodes_of(workflow: dict[str, Any]) -> list[str]:
    """`id (class)` of the nodes no other node takes an input from: a workflow's output nodes."""
    linked = {
        str(value[0])
        for node in workflow.values()
        for value in (node.get("inputs") or {}).values()
        if isinstance(value, list) and len(value) == 2
    }
    return [f"{node_id} ({node.get('class_type')})" for node_id, node in workflow.items() if node_id not in linked]


def describe_node_errors(node_errors: Any) -> list[str]:
    """One line per problem: `node 4 (CheckpointLoaderSimple) input 'ckpt_name': value not in list: ...`."""
    if not isinstance(node_errors, dict):
        return []
    lines = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        where = f"node {node_id} ({entry.get('class_type') or 'unknown class'})"
        errors = [error for error in entry.get("errors") or [] if isinstance(error, dict)]
        if not errors:
            lines.append(f"{where}: failed validation")
        for error in errors:
            extra = _dict_at(error, "extra_info")
            input_name = extra.get("input_name")
            prefix = f"{where} input '{input_name}'" if input_name else where
            lines.append(f"{prefix}: {_describe_input_error(error, extra)}")
    return lines


def _dict_at(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    """mapping[key] when it is a JSON object, else an empty one (ComfyUI leaves such fields out or null)."""
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _describe_input_error(error: dict[str, Any], extra: dict[str, Any]) -> str:
    kind = error.get("type")
    message = str(error.get("message") or "").strip()
    details = str(error.get("details") or "").strip()
    received = extra.get("received_value")
    config = extra.get("input_config")
    if kind == "required_input_missing":
        return "required input is missing"
    if kind == "value_not_in_list":
        return _describe_not_in_list(received, config)
    if kind in ("value_bigger_than_max", "value_smaller_than_min"):
        return _lower_first(message)
    if kind == "invalid_input_type":
        return _describe_invalid_type(received, config, extra)
    if kind == "return_type_mismatch":
        return _describe_type_mismatch(config, extra)
    if kind == "bad_linked_input":
        return f"bad link {received!r}: a link must be [node_id, output_index]"
    if kind in ("exception_during_validation", "exception_during_inner_validation"):
        return _describe_validation_exception(message, details, extra)
    if message and details:
        return f"{_lower_first(message)}: {details}"
    return _lower_first(message or details) or str(kind or "invalid")


def _describe_invalid_type(received: Any, config: Any, extra: dict[str, Any]) -> str:
    wanted = config[0] if isinstance(config, list) and config else "the expected type"
    reason = extra.get("exception_message")
    return f"{received!r} is not a valid {wanted} value" + (f" ({reason})" if reason else "")


def _describe_type_mismatch(config: Any, extra: dict[str, Any]) -> str:
    wanted = config[0] if isinstance(config, list) and config else "?"
    linked = extra.get("linked_node")
    source = f"output {linked[1]} of node {linked[0]}" if isinstance(linked, list) and len(linked) == 2 else "link"
    return f"{source} gives {extra.get('received_type')}, but the input takes {wanted}"


def _describe_validation_exception(message: str, details: str, extra: dict[str, Any]) -> str:
    exception_type = extra.get("exception_type") or "exception"
    if exception_type == "KeyError":
        return f"a link points to node {details}, which is not in the workflow ({exception_type})"
    if exception_type == "IndexError":
        return f"a link points to an output index its source node does not have ({exception_type}: {details})"
    return f"{_lower_first(message) or 'validation raised'}: {exception_type}: {details}"


def _describe_not_in_list(received: Any, config: Any) -> str:
    text = f"value not in list: {received!r}"
    if isinstance(received, str) and received.lower().endswith(MODEL_FILE_SUFFIXES):
        return text + " (not installed on this instance)"
    options: Any = None
    if isinstance(config, list) and config:
        options = config[0] if isinstance(config[0], list) else None
        if config[0] == "COMBO" and len(config) > 1 and isinstance(config[1], dict):
            options = config[1].get("options")
    if isinstance(options, list) and options:
        shown = ", ".join(repr(option) for option in options[:MAX_LISTED_OPTIONS])
        more = f", ... ({len(options)} in all)" if len(options) > MAX_LISTED_OPTIONS else ""
        text += f" (allowed: {shown}{more})"
    return text


def rejection_message(instance: str, error: Any, node_errors: Any) -> str:
    """The one-line reason ComfyUI gave for refusing a prompt (POST /prompt 400)."""
    lines = describe_node_errors(node_errors)
    if not lines and isinstance(error, dict):
        message = str(error.get("message") or "").strip()
        details = str(error.get("details") or "").strip()
        line = message + (f" ({details})" if details and details != message else "")
        missing = _MISSING_CLASS.search(message)
        if missing:
            line += f"; the node class {missing['cls']} is not installed on this instance"
        lines.append(line or str(error.get("type") or "invalid prompt"))
    return f"ComfyUI at {instance} rejected the workflow: " + ("; ".join(lines) or "no reason given")


def execution_failed(instance: str, data: dict[str, Any]) -> ComfyExecutionFailed:
    """ComfyExecutionFailed from an `execution_error` message (WebSocket or history)."""
    node_id, node_type = str(data.get("node_id")), str(data.get("node_type") or "unknown class")
    exception_type = str(data.get("exception_type") or "Exception")
    exception_message = str(data.get("exception_message") or "").strip()
    first_line = next((line.strip() for line in exception_message.splitlines() if line.strip()), "no message")
    traceback = [str(line) for line in data.get("traceback") or []]
    return ComfyExecutionFailed(
        f"ComfyUI at {instance}: node {node_id} ({node_type}) failed with {exception_type}: {first_line}",
        node_id=node_id,
        node_type=node_type,
        exception_type=exception_type,
        exception_message=exception_message,
        traceback=traceback,
    )


def interrupted(instance: str, prompt_id: str, data: dict[str, Any]) -> ComfyInterrupted:
    node_id, node_type = data.get("node_id"), data.get("node_type")
    where = f" before node {node_id} ({node_type})" if node_id is not None else ""
    return ComfyInterrupted(
        f"prompt {prompt_id} was interrupted on ComfyUI at {instance}{where}",
        node_id=None if node_id is None else str(node_id),
        node_type=None if node_type is None else str(node_type),
    )


def result_from_history(instance: str, prompt_id: str, entry: dict[str, Any]) -> RunResult:
    """The RunResult of a finished prompt's history entry, or the error it ended with (raised)."""
    status = _dict_at(entry, "status")
    messages = [m for m in status.get("messages") or [] if isinstance(m, list | tuple) and len(m) == 2]
    cached: list[str] = []
    for event, data in messages:
        if not isinstance(data, dict):
            continue
        if event == "execution_cached":
            cached = [str(node) for node in data.get("nodes") or []]
        elif event == "execution_error":
            raise execution_failed(instance, data)
        elif event == "execution_interrupted":
            raise interrupted(instance, prompt_id, data)
    if status.get("status_str") == "error":
        raise ComfyExecutionFailed(
            f"ComfyUI at {instance}: prompt {prompt_id} ended with an error it did not describe",
            node_id="",
            node_type="",
            exception_type="unknown",
        )
    outputs_by_node = _dict_at(entry, "outputs")
    outputs = [ref for node_id, output in outputs_by_node.items() for ref in parse_outputs(node_id, output)]
    return RunResult(prompt_id=prompt_id, outputs=outputs, cached_nodes=cached)


@dataclass
class RunTracker:
    """Folds the WebSocket messages of one prompt into its result; raises the error the prompt ends with."""

    instance: str
    prompt_id: str
    nodes: Collection[str] = ()  # the workflow's node ids: what "nodes done of nodes to run" counts
    websocket_outputs: Collection[str] = ()  # ids of nodes whose images come as binary frames
    images: list[WebSocketImage] = field(default_factory=list)
    outputs: dict[str, list[OutputRef]] = field(default_factory=dict)
    cached_nodes: list[str] = field(default_factory=list)
    node_seconds: dict[str, float] = field(default_factory=dict)
    current_node: str | None = None
    current_since: float = 0.0  # monotonic: when `current_node` began
    finished: bool = False
    progress: PromptProgress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = PromptProgress(self.nodes)

    def concerns(self, message: Any) -> bool:
        return (
            isinstance(message, dict)
            and isinstance(message.get("data"), dict)
            and message["data"].get("prompt_id") == self.prompt_id
        )

    def apply(self, message: dict[str, Any]) -> ProgressUpdate | None:
        """Apply one message of this prompt; returns the job's progress when it moved."""
        kind, data = message.get("type"), message["data"]
        if kind == "executing":
            node = data.get("node")
            self._node_ended()
            if node is None:  # the classic "prompt done" signal: always last, for success and errors alike
                self.finished = True
            else:
                self.current_node, self.current_since = str(node), time.monotonic()
        elif kind == "executed":
            node_id = str(data.get("node"))
            self.outputs[node_id] = parse_outputs(node_id, data.get("output"))
        elif kind == "execution_cached":
            self.cached_nodes = [str(node) for node in data.get("nodes") or []]
        elif kind == "execution_error":
            raise execution_failed(self.instance, data)
        elif kind == "execution_interrupted":
            raise interrupted(self.instance, self.prompt_id, data)
        elif kind == "execution_success":
            self._node_ended()
            self.finished = True
        return self.progress.update() if self.progress.apply(kind, data) else None

    def _node_ended(self) -> None:
        """The running node, if any, is done: keep how long it took (ComfyUI runs one node at a time)."""
        if self.current_node is not None and not self.finished:
            took = time.monotonic() - self.current_since
            self.node_seconds[self.current_node] = self.node_seconds.get(self.current_node, 0.0) + took
            self.current_since = time.monotonic()

    def apply_binary(self, frame: bytes) -> None:
        """A binary frame: an output image when a websocket output node of this prompt is executing, else a
        preview (a sampler's, during its `progress`), which is not kept. ComfyUI runs one prompt at a time, so a
        frame that arrives while our node executes is that node's, even a type-1 frame without metadata."""
        node = self.current_node
        if node is None or self.finished or node not in self.websocket_outputs:
            return
        image = parse_binary_image(frame)
        if image is None:
            return
        prompt_id, node_id, content_type, data = image
        if prompt_id not in (None, self.prompt_id) or node_id not in (None, node):
            return
        extension = next((ext for kind, ext in IMAGE_FORMATS.values() if kind == content_type), "bin")
        self.images.append(WebSocketImage(node, data, content_type, extension))

    def result(self) -> RunResult:
        outputs = [ref for refs in self.outputs.values() for ref in refs]
        return RunResult(
            prompt_id=self.prompt_id,
            outputs=outputs,
            cached_nodes=list(self.cached_nodes),
            images=list(self.images),
            node_seconds=dict(self.node_seconds),
        )


# --------------------------------------------------------------------------- the client


class _Event:
    MESSAGE, BINARY, CLOSED, CANCEL = "message", "binary", "closed", "cancel"


class ComfyClient:
    """One ComfyUI instance. Safe to share between tasks; close with `aclose()` or `async with`."""

    def __init__(self, base_url: str, *, auth_header: str | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = _validate_base_url(base_url)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._headers = {"User-Agent": USER_AGENT}
        if auth_header is not None:
            name, value = _parse_auth_header(auth_header)
            self._headers[name] = value
        self._http = Http11Client(self.base_url, self._headers, self.timeout_s)
        split = urllib.parse.urlsplit(self.base_url)
        self._ws_base = urllib.parse.urlunsplit(
            ("wss" if split.scheme == "https" else "ws", split.netloc, split.path + "/ws", "", "")
        )
        # None = not tried yet; False = this server has no such route (0.3.64 answers 404)
        self._jobs_status_api: bool | None = None
        self._jobs_cancel_api: bool | None = None
        self._seen_version: str | None = None
        self._socket: _SharedSocket | None = None
        self._socket_opening = asyncio.Lock()  # concurrent first runs wait for one handshake, not one each
        self._closing: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:  # never shows the auth header
        return f"ComfyClient({self.base_url!r})"

    async def aclose(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=QUIET_CANCEL_TIMEOUT_S)
        await self._http.aclose()

    def _socket_closed(self, closing: asyncio.Future[None]) -> None:
        self._closing.discard(closing)
        if not closing.cancelled():
            closing.exception()  # retrieved: a failed close handshake is of no interest

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- discovery

    async def system_stats(self) -> SystemInfo:
        body = await self._get_json("/system_stats")
        try:
            info = parse_system_stats(body)
        except ValueError as exc:
            raise self._not_comfyui("GET /system_stats", str(exc)) from exc
        if info.comfyui_version != self._seen_version:  # upgraded in place: its routes may have changed
            self._seen_version = info.comfyui_version
            self._jobs_status_api = self._jobs_cancel_api = None
        return info

    async def queue(self, *, timeout_s: float | None = None) -> QueueState:
        body = await self._get_json("/queue", timeout_s=timeout_s)
        try:
            return parse_queue(body)
        except ValueError as exc:
            raise self._not_comfyui("GET /queue", str(exc)) from exc

    async def object_info(self) -> dict[str, Any]:
        body = await self._get_json("/object_info")
        if not isinstance(body, dict) or not all(isinstance(info, dict) for info in body.values()):
            raise self._not_comfyui("GET /object_info", "expected a JSON object of node classes")
        return body

    async def models(self, folder: str) -> list[str]:
        """Model files of one folder ("checkpoints", "loras", ...); [] for a folder this server does not know."""
        if not folder or "/" in folder or "\\" in folder:
            raise ValueError(f"folder must be a model folder name like 'checkpoints', got {folder!r}")
        path = "/models/" + _quote(folder)
        response = await self._send("GET", path)
        if response.status_code == 404:
            return []
        body = self._json_of(response, "GET " + path)
        if not isinstance(body, list) or not all(isinstance(name, str) for name in body):
            raise self._not_comfyui("GET " + path, "expected a JSON list of file names")
        return body

    # ---------------------------------------------------------------- inputs and prompts

    async def upload_image(self, data: bytes, filename: str, *, subfolder: str = "hub", overwrite: bool = True) -> str:
        """Upload into the input folder; returns the name for `LoadImage.image` ("subfolder/name")."""
        if not filename or filename in (".", "..") or "/" in filename or "\\" in filename:
            raise ValueError(f"filename must be a plain file name without folders, got {filename!r}")
        if subfolder.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", subfolder):
            raise ValueError(f"subfolder must be a relative folder inside the input folder, got {subfolder!r}")
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        fields = {"subfolder": subfolder, "type": "input", "overwrite": "true" if overwrite else "false"}
        body, form_type = _multipart(fields, "image", filename, data, content_type)
        response = await self._send("POST", "/upload/image", content=body, content_type=form_type)
        if response.status_code in (400, 413):
            reason = "it is larger than the instance accepts" if response.status_code == 413 else "bad name or folder"
            raise ComfyError(
                f"ComfyUI at {self.base_url} refused the upload of {filename!r} (HTTP {response.status_code}: {reason})"
            )
        body = self._json_of(response, "POST /upload/image")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise self._not_comfyui("POST /upload/image", "expected a JSON object with 'name'")
        stored_subfolder = body.get("subfolder") if isinstance(body.get("subfolder"), str) else subfolder
        return f"{stored_subfolder}/{body['name']}" if stored_subfolder else body["name"]

    async def submit(
        self, workflow: dict[str, Any], *, client_id: str, prompt_id: str, extra_data: dict[str, Any] | None = None
    ) -> str:
        """Queue a workflow (API format); returns the prompt id the server uses (ours unless it is too old)."""
        _check_id("prompt_id", prompt_id)
        if not isinstance(workflow, dict) or not workflow:
            raise ComfyRejected(f"ComfyUI at {self.base_url} rejected the workflow: it must be a non-empty JSON object")
        body: dict[str, Any] = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            content = msgspec.json.encode(body)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ComfyRejected(f"the workflow cannot be sent to ComfyUI: it is not JSON ({exc})") from exc
        response = await self._send("POST", "/prompt", content=content, content_type="application/json")
        if response.status_code == 400:
            answer = _decode_or_none(response)
            if not isinstance(answer, dict):
                text = response.text.strip()[:200]
                raise ComfyRejected(f"ComfyUI at {self.base_url} rejected the workflow: HTTP 400 {text}".rstrip())
            node_errors = answer.get("node_errors") if isinstance(answer.get("node_errors"), dict) else {}
            error = (
                answer.get("error") if isinstance(answer.get("error"), dict) else {"message": str(answer.get("error"))}
            )
            raise ComfyRejected(rejection_message(self.base_url, error, node_errors), node_errors, error)
        if response.status_code == 413:
            raise ComfyRejected(f"ComfyUI at {self.base_url} rejected the workflow: it is larger than it accepts")
        answer = self._json_of(response, "POST /prompt")
        if not isinstance(answer, dict):
            raise self._not_comfyui("POST /prompt", "expected a JSON object with 'prompt_id'")
        answered_id = answer.get("prompt_id")
        server_id = answered_id if isinstance(answered_id, str) else prompt_id
        node_errors = answer.get("node_errors")
        if isinstance(node_errors, dict) and node_errors:
            # Only the valid outputs would run: a partial result is no result, so take the prompt back.
            await self._cancel_quietly(server_id)
            message = rejection_message(self.base_url, None, node_errors)
            raise ComfyRejected(message + " (other outputs were valid; the prompt was withdrawn)", node_errors)
        return server_id

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt; None while it is queued or running, or when unknown."""
        return await self._history(prompt_id)

    async def _history(self, prompt_id: str, *, timeout_s: float | None = None) -> dict[str, Any] | None:
        path = "/history/" + _quote(prompt_id)
        body = await self._get_json(path, timeout_s=timeout_s)
        if not isinstance(body, dict):
            raise self._not_comfyui("GET " + path, "expected a JSON object")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def cancel(self, prompt_id: str) -> None:
        """Withdraw a pending prompt or interrupt it while it runs; a finished or unknown one is left alone.

        The interrupt is cooperative: it lands when the next node starts (or at a sampler step).
        """
        _check_id("prompt_id", prompt_id)
        await self._cancel(prompt_id, None)

    async def _cancel(self, prompt_id: str, timeout_s: float | None) -> None:
        if self._jobs_cancel_api is not False:
            path = f"/api/jobs/{_quote(prompt_id)}/cancel"
            response = await self._send("POST", path, timeout_s=timeout_s)
            if response.status_code == 200:
                self._jobs_cancel_api = True
                answer = _decode_or_none(response)
                if isinstance(answer, dict) and answer.get("cancelled") is True:
                    return
                # False: finished, unknown, or an id format the route does not take -> the classic routes too
            elif response.status_code in (404, 405):
                self._jobs_cancel_api = False
            elif response.status_code >= 500:
                raise self._unexpected(response, "POST " + path)
        await self._legacy_cancel(prompt_id, timeout_s)

    async def _legacy_cancel(self, prompt_id: str, timeout_s: float | None) -> None:
        response = await self._send_json("POST", "/queue", {"delete": [prompt_id]}, timeout_s=timeout_s)
        if response.status_code != 200:
            raise self._unexpected(response, "POST /queue")
        # Servers before the targeted interrupt ignore the body and stop whatever runs: only interrupt ours.
        if prompt_id in (await self.queue(timeout_s=timeout_s)).running:
            response = await self._send_json("POST", "/interrupt", {"prompt_id": prompt_id}, timeout_s=timeout_s)
            if response.status_code != 200:
                raise self._unexpected(response, "POST /interrupt")

    async def _cancel_quietly(self, prompt_id: str) -> None:
        with contextlib.suppress(ComfyError):
            await self._cancel(prompt_id, min(self.timeout_s, QUIET_CANCEL_TIMEOUT_S))

    # ---------------------------------------------------------------- outputs

    def open_output(self, ref: OutputRef, *, rendition: str | None = None) -> AbstractAsyncContextManager[OutputStream]:
        """Stream one output file: `async with client.open_output(ref) as s: async for c in s.chunks(): ...`.
        `rendition` ("jpeg;60"): ComfyUI's re-encoded copy instead (`/view`'s `preview`: see
        dispatch_service.renditions)."""
        return self._open_output(ref, rendition)

    @contextlib.asynccontextmanager
    async def _open_output(self, ref: OutputRef, rendition: str | None = None) -> AsyncIterator[OutputStream]:
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        if rendition is not None:
            params["preview"] = rendition
        shown = f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename
        try:
            async with self._http.stream("GET", "/view", params=params) as response:
                await self._check_served(response, ref, shown)
                yield OutputStream(response, ref, self.base_url)
        except HttpError as exc:
            raise self._transport_error(exc, "GET /view", None) from exc

    async def _check_served(self, response: Response, ref: OutputRef, shown: str) -> None:
        if response.status_code == 404:
            raise ComfyOutputMissing(
                f"output {shown} ({ref.type}) of node {ref.node_id} no longer exists on the instance {self.base_url}"
            )
        if response.status_code in (400, 403):
            raise ComfyError(
                f"ComfyUI at {self.base_url} refused to serve output {shown!r} (HTTP {response.status_code}): "
                "the reference points outside its folders"
            )
        if response.status_code != 200:
            await response.aread()
            raise self._unexpected(response, "GET /view")

    # ---------------------------------------------------------------- running a prompt

    async def run(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str,
        on_progress: Callable[[ProgressUpdate], Awaitable[None]] | None = None,
        stall_timeout_s: float = 60.0,
        total_timeout_s: float = 3600.0,
        cancelled: asyncio.Event | None = None,
        extra_data: dict[str, Any] | None = None,
        on_output: Callable[[OutputRef], None] | None = None,
    ) -> RunResult:
        """Submit a workflow and follow it to its end; returns its outputs or raises why it has none.
        `on_output` hears each output file as soon as its node reports it (`executed`), before the prompt ends.

        Live events come over the client's WebSocket (one per instance, its client id on every prompt, messages
        routed by prompt id), followed before the submit; when the socket drops, `/history` is polled instead.
        Silence for `stall_timeout_s` triggers a probe: still queued or running -> keep waiting; server silent or
        prompt gone -> ComfyUnavailable.
        """
        _check_id("prompt_id", prompt_id)
        if not stall_timeout_s > 0 or not total_timeout_s > 0:
            raise ValueError("stall_timeout_s and total_timeout_s must be positive")
        if cancelled is not None and cancelled.is_set():
            raise ComfyInterrupted(f"prompt {prompt_id} was cancelled before it was sent to ComfyUI at {self.base_url}")
        socket = await self._live_socket()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        watcher = asyncio.create_task(_watch(cancelled, events)) if cancelled is not None else None
        server_id: str | None = None
        submitting = False
        settled = False  # the prompt reached an end (or was withdrawn): nothing to clean up on the server
        if socket is not None:
            socket.follow(prompt_id, events)  # before the submit: its first messages may come before the answer
        try:
            submitting = True  # from here on the prompt may be queued even if no answer comes back
            client_id = socket.client_id if socket is not None else _new_client_id()
            server_id = await self.submit(workflow, client_id=client_id, prompt_id=prompt_id, extra_data=extra_data)
            # A server too old to take our prompt id names it itself, after its first messages may have gone by
            # unrouted: that prompt is followed by polling.
            live = socket is not None and server_id == prompt_id
            follower = _Follower(self, server_id, events, live, on_progress, cancelled, workflow, on_output)
            try:
                return await follower.follow(stall_timeout_s, total_timeout_s)
            finally:
                settled = follower.settled
        except ComfyRejected:
            settled = True
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if socket is not None:
                socket.forget(prompt_id)
            if submitting and not settled:
                await asyncio.shield(self._cancel_quietly(server_id or prompt_id))

    async def where_is(self, prompt_id: str) -> str:
        """Where a prompt is now: "running", "pending", "finished" or "unknown"."""
        _check_id("prompt_id", prompt_id)
        return (await self._locate(prompt_id, min(self.timeout_s, PROBE_TIMEOUT_S)))[0]

    async def follow_submitted(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str,
        stall_timeout_s: float = 60.0,
        total_timeout_s: float = 3600.0,
        cancelled: asyncio.Event | None = None,
    ) -> RunResult:
        """Follow a prompt submitted earlier (by a dispatcher that died meanwhile) to its end, like `run` once the
        prompt is queued. ComfyUI sends a prompt's live events only to the client that submitted it, so this one
        polls `/history` (no progress updates) and probes the queue when it hears nothing for `stall_timeout_s`."""
        _check_id("prompt_id", prompt_id)
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        watcher = asyncio.create_task(_watch(cancelled, events)) if cancelled is not None else None
        follower = _Follower(self, prompt_id, events, False, None, cancelled, workflow)
        try:
            return await follower.follow(stall_timeout_s, total_timeout_s)
        finally:
            if watcher is not None:
                watcher.cancel()
            if not follower.settled:
                await asyncio.shield(self._cancel_quietly(prompt_id))

    async def _live_socket(self) -> _SharedSocket | None:
        """The client's WebSocket, opened at the first run and again after it closed; None for a server that
        refuses WebSockets (its prompts are followed by polling). Every prompt names its client id, so ComfyUI
        sends all their messages on it: one handshake per instance, not one per job."""
        async with self._socket_opening:
            socket = self._socket
            if socket is not None and socket.is_open:
                return socket
            self._socket = None
            if socket is not None:  # closed by the server or the network: its close handshake in the background
                closing = asyncio.ensure_future(socket.close())
                self._closing.add(closing)
                closing.add_done_callback(self._socket_closed)
            # A new client id each time: ComfyUI unregisters a client id when its old socket closes, which would
            # silence a new socket of the same id.
            client_id = _new_client_id()
            ws = await self._open_run_socket(client_id)
            if ws is None:
                return None
            self._socket = _SharedSocket(client_id, ws)
            return self._socket

    async def _open_run_socket(self, client_id: str) -> ClientConnection | None:
        """Connect `/ws?clientId=` and wait for the greeting (the server has registered us by then).

        None when the server answers the handshake with an HTTP error: such a server (or its proxy) can
        still run prompts, followed by polling.
        """
        url = f"{self._ws_base}?clientId={urllib.parse.quote(client_id, safe='')}"
        try:
            ws = await connect(
                url,
                additional_headers=self._headers,
                user_agent_header=None,
                open_timeout=self.timeout_s,
                close_timeout=min(self.timeout_s, QUIET_CANCEL_TIMEOUT_S),
                max_size=WS_MAX_FRAME_BYTES,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 407):
                raise ComfyUnavailable(
                    f"ComfyUI at {self.base_url} refused the WebSocket (HTTP {status}): "
                    "check the instance's auth header"
                ) from exc
            log.warning(
                "ComfyUI at %s refused the WebSocket (HTTP %s); following prompts by polling", self.base_url, status
            )
            return None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ComfyUnavailable(f"cannot open the WebSocket of ComfyUI at {self.base_url}: {_cause(exc)}") from exc
        try:
            greeting = await asyncio.wait_for(ws.recv(), self.timeout_s)
        except (TimeoutError, ConnectionClosed) as exc:
            await ws.close()
            raise ComfyUnavailable(
                f"ComfyUI at {self.base_url} opened the WebSocket but sent no status within {self.timeout_s:g} s"
            ) from exc
        message = _decode_text(greeting)
        if not isinstance(message, dict) or message.get("type") != "status":
            await ws.close()
            raise self._not_comfyui("GET /ws", "the first WebSocket frame is not a status message")
        return ws

    async def _drop_websockets_for_test(self) -> int:
        """Test hook: close the live socket as a network failure would, once this client has seen it closed;
        returns how many were cut (0 or 1)."""
        socket = self._socket
        if socket is None or not socket.is_open:
            return 0
        socket.ws.transport.abort()
        await asyncio.wait([socket.reading], timeout=self.timeout_s)
        return 1

    async def _locate(self, prompt_id: str, timeout_s: float) -> tuple[str, dict[str, Any] | None]:
        """Where a prompt is: ("running"|"pending", None), ("finished", history entry) or ("unknown", None)."""
        if self._jobs_status_api is not False:
            located = await self._locate_by_jobs_api(prompt_id, timeout_s)
            if located is not None:
                return located
        state = await self.queue(timeout_s=timeout_s)
        if prompt_id in state.running:
            return "running", None
        if prompt_id in state.pending:
            return "pending", None
        entry = await self._history(prompt_id, timeout_s=timeout_s)  # after /queue: a prompt ends into history
        return ("finished", entry) if entry is not None else ("unknown", None)

    async def _locate_by_jobs_api(self, prompt_id: str, timeout_s: float) -> tuple[str, dict[str, Any] | None] | None:
        path = "/api/jobs/" + _quote(prompt_id)
        response = await self._send("GET", path, timeout_s=timeout_s)
        answer = _decode_or_none(response)
        if response.status_code == 404:
            if isinstance(answer, dict) and "error" in answer:  # the route exists and knows no such job
                self._jobs_status_api = True
                return "unknown", None
            self._jobs_status_api = False  # 0.3.64: the static file route's empty 404
            return None
        if response.status_code >= 500:
            raise self._unexpected(response, "GET " + path)
        if response.status_code != 200 or not isinstance(answer, dict):
            return None  # e.g. 400 for an id format it does not take: ask /queue this time
        self._jobs_status_api = True
        status = answer.get("status")
        if status == "in_progress":
            return "running", None
        if status == "pending":
            return "pending", None
        if status in ("completed", "failed"):
            entry = await self._history(prompt_id, timeout_s=timeout_s)
            if entry is None:  # evicted from history meanwhile: the job record carries the same fields
                entry = {"outputs": answer.get("outputs") or {}, "status": answer.get("execution_status") or {}}
            return "finished", entry
        return None

    # ---------------------------------------------------------------- HTTP plumbing

    async def _send(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float | None = None,
        content: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        try:
            return await self._http.request(
                method, path, content=content, content_type=content_type, timeout_s=timeout_s
            )
        except HttpError as exc:
            raise self._transport_error(exc, f"{method} {path}", timeout_s) from exc

    async def _send_json(self, method: str, path: str, body: Any, *, timeout_s: float | None) -> Response:
        content = msgspec.json.encode(body)
        return await self._send(method, path, content=content, content_type="application/json", timeout_s=timeout_s)

    async def _get_json(self, path: str, *, timeout_s: float | None = None) -> Any:
        response = await self._send("GET", path, timeout_s=timeout_s)
        return self._json_of(response, "GET " + path)

    def _json_of(self, response: Response, what: str) -> Any:
        if response.status_code != 200:
            raise self._unexpected(response, what)
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            content_type = response.headers.get("content-type", "no content type")
            raise self._not_comfyui(what, f"the answer is not JSON ({content_type})") from exc

    def _transport_error(self, exc: HttpError, what: str, timeout_s: float | None) -> ComfyUnavailable:
        if isinstance(exc, HttpTimeoutError):
            seconds = timeout_s if timeout_s is not None else self.timeout_s
            return ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {what} within {seconds:g} s")
        if isinstance(exc, HttpConnectError):
            return ComfyUnavailable(f"cannot connect to ComfyUI at {self.base_url}: {_cause(exc)}")
        return ComfyUnavailable(f"ComfyUI at {self.base_url}: {what} failed: {_cause(exc)}")

    def _unexpected(self, response: Response, what: str) -> ComfyUnavailable:
        status = response.status_code
        if status in (401, 403, 407):
            return ComfyUnavailable(
                f"ComfyUI at {self.base_url} refused {what} (HTTP {status}): check the instance's auth header"
            )
        if status >= 500:
            text = " ".join(response.text.split())[:200]  # "" for a streamed answer left unread
            detail = f": {text}" if text else ""
            return ComfyUnavailable(f"ComfyUI at {self.base_url} failed {what} with HTTP {status}{detail}")
        if 300 <= status < 400:
            where = response.headers.get("location", "?")
            return self._not_comfyui(what, f"it redirects (HTTP {status}) to {where}; use that URL as the base URL")
        return self._not_comfyui(what, f"it answered HTTP {status}")

    def _not_comfyui(self, what: str, reason: str) -> ComfyUnavailable:
        return ComfyUnavailable(f"{self.base_url} is not a ComfyUI server: {what}: {reason}")


def _new_client_id() -> str:
    # Never reused: a second socket with the same id silently takes over the first one's messages.
    return f"hub-{secrets.token_hex(8)}"


class _SharedSocket:
    """The WebSocket of one client, shared by every run on its instance. ComfyUI sends a prompt's messages to the
    socket of the prompt's client id, each naming the prompt (`data.prompt_id`): they go to the queue of the run
    that follows that prompt. Binary frames name no prompt (legacy previews, SaveImageWebsocket images): they go
    to the prompt whose message came last, as ComfyUI runs one prompt at a time. What no run follows (`status`
    broadcasts, other clients' prompts) is dropped, so an idle socket never makes the server wait."""

    def __init__(self, client_id: str, ws: ClientConnection) -> None:
        self.client_id = client_id
        self.ws = ws
        self._routes: dict[str, asyncio.Queue[tuple[str, Any]]] = {}
        self._current: str | None = None  # the prompt ComfyUI runs now, as far as its messages tell
        self.reading = asyncio.ensure_future(self._read())

    @property
    def is_open(self) -> bool:
        return not self.reading.done() and self.ws.state is State.OPEN

    def follow(self, prompt_id: str, events: asyncio.Queue[tuple[str, Any]]) -> None:
        self._routes[prompt_id] = events
        if self.reading.done():  # closed meanwhile: the run polls from the start
            events.put_nowait((_Event.CLOSED, "closed before the prompt was sent"))

    def forget(self, prompt_id: str) -> None:
        self._routes.pop(prompt_id, None)

    async def close(self) -> None:
        self.reading.cancel()  # cancelling a websockets recv() loses no message
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reading
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _read(self) -> None:
        """WebSocket -> the runs' queues, then one CLOSED to each run still following (also when the client is
        closed under them: they poll, as they would after a drop)."""
        reason: Any = "closed"
        try:
            async for frame in self.ws:
                self._route(frame)
        except ConnectionClosed as exc:
            reason = exc
        finally:
            for events in self._routes.values():
                events.put_nowait((_Event.CLOSED, reason))

    def _route(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            events = self._routes.get(self._current) if self._current is not None else None
            if events is not None:
                events.put_nowait((_Event.BINARY, frame))
            return
        message = _decode_text(frame)
        data = message.get("data") if isinstance(message, dict) else None
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if not isinstance(prompt_id, str):
            return  # `status` and the like: no run's business
        self._current = prompt_id
        events = self._routes.get(prompt_id)
        if events is not None:
            events.put_nowait((_Event.MESSAGE, message))


class _Follower:
    """Follows one submitted prompt to its end (the body of `ComfyClient.run`)."""

    def __init__(
        self,
        client: ComfyClient,
        prompt_id: str,
        events: asyncio.Queue[tuple[str, Any]],
        live: bool,
        on_progress: Callable[[ProgressUpdate], Awaitable[None]] | None,
        cancelled: asyncio.Event | None,
        workflow: dict[str, Any],
        on_output: Callable[[OutputRef], None] | None = None,
    ) -> None:
        self.client = client
        self.on_output = on_output
        self.prompt_id = prompt_id
        self.events = events
        self.polling = not live
        self.on_progress = on_progress
        self.cancelled = cancelled
        websocket_outputs = [
            node_id for node_id, node in workflow.items() if node.get("class_type") in WEBSOCKET_OUTPUT_CLASSES
        ]
        self.tracker = RunTracker(client.base_url, prompt_id, workflow.keys(), websocket_outputs)
        self.cancel_sent = False
        self.settled = False
        self.last_heard = self.next_poll = 0.0  # loop times, set when `follow` starts

    async def follow(self, stall_timeout_s: float, total_timeout_s: float) -> RunResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_timeout_s
        self.last_heard = self.next_poll = loop.time()
        while True:
            await self._send_cancel_once(loop)
            now = loop.time()
            if now >= deadline:
                raise await self._timed_out(total_timeout_s)
            wake = min(deadline, self.last_heard + stall_timeout_s)
            if self.polling or self.cancel_sent:
                wake = min(wake, self.next_poll)
            kind, payload = await _next_event(self.events, wake - now)
            result = await self._on_event(kind, payload, loop)
            if result is None:
                result = await self._poll_if_due(loop)
            if result is None:
                result = await self._probe_if_stalled(loop, stall_timeout_s)
            if result is not None:
                return result

    async def _send_cancel_once(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.cancelled is not None and self.cancelled.is_set() and not self.cancel_sent:
            await self.client.cancel(self.prompt_id)
            self.cancel_sent = True
            self.next_poll = loop.time() + POLL_INTERVAL_S

    async def _on_event(self, kind: str | None, payload: Any, loop: asyncio.AbstractEventLoop) -> RunResult | None:
        if kind == _Event.MESSAGE and self.tracker.concerns(payload):
            self.last_heard = loop.time()
            return await self._apply(payload)
        if kind == _Event.BINARY:
            self.tracker.apply_binary(payload)
        elif kind == _Event.CLOSED and not self.polling:
            log.warning(
                "WebSocket of ComfyUI at %s closed during prompt %s (%s); polling /history",
                self.client.base_url,
                self.prompt_id,
                payload,
            )
            self.polling = True
            self.next_poll = loop.time()
        return None

    async def _poll_if_due(self, loop: asyncio.AbstractEventLoop) -> RunResult | None:
        now = loop.time()
        if not (self.polling or self.cancel_sent) or now < self.next_poll:
            return None
        self.next_poll = now + POLL_INTERVAL_S
        return await self._poll()

    async def _probe_if_stalled(self, loop: asyncio.AbstractEventLoop, stall_timeout_s: float) -> RunResult | None:
        if loop.time() - self.last_heard < stall_timeout_s:
            return None
        result = await self._probe(stall_timeout_s)
        if result is None:
            self.last_heard = loop.time()
        return result

    async def _apply(self, message: dict[str, Any]) -> RunResult | None:
        try:
            update = self.tracker.apply(message)
        except (ComfyExecutionFailed, ComfyInterrupted) as exc:
            self.settled = True
            if self.cancel_sent and not isinstance(exc, ComfyInterrupted):
                raise self._cancelled_error("it ended with an error first") from exc
            raise
        if self.on_output is not None and message.get("type") == "executed":
            for ref in self.tracker.outputs.get(str(message["data"].get("node")), ()):
                self.on_output(ref)
        if self.tracker.finished:
            self.settled = True
            if self.cancel_sent:
                raise self._cancelled_error("it had already finished")
            return self.tracker.result()
        if update is not None and self.on_progress is not None:
            await self.on_progress(update)
        return None

    async def _poll(self) -> RunResult | None:
        """One look at the server while the socket is gone or a cancel is landing."""
        if self.cancel_sent:
            where, entry = await self.client._locate(self.prompt_id, self.client.timeout_s)
            if where in ("running", "pending"):
                return None
            self.settled = True
            if where == "unknown":
                raise self._cancelled_error("it was withdrawn from the queue before it ran")
            return self._finish_from_history(entry or {})
        entry = await self.client.history(self.prompt_id)
        return None if entry is None else self._finish_from_history(entry)

    async def _probe(self, stall_timeout_s: float) -> RunResult | None:
        """Nothing heard about the prompt for a while: is the server alive, and does it still have it?"""
        probe_timeout = min(self.client.timeout_s, PROBE_TIMEOUT_S)
        try:
            where, entry = await self.client._locate(self.prompt_id, probe_timeout)
        except ComfyUnavailable as exc:
            raise ComfyUnavailable(
                f"ComfyUI at {self.client.base_url} stopped answering: nothing heard about prompt {self.prompt_id} "
                f"for {stall_timeout_s:g} s, and then: {exc}"
            ) from exc
        if where in ("running", "pending"):
            return None  # a long node, or a long queue: keep waiting
        self.settled = True
        if where == "finished":
            return self._finish_from_history(entry or {})
        raise ComfyUnavailable(
            f"ComfyUI at {self.client.base_url} lost prompt {self.prompt_id}: it is neither queued, running nor in "
            "its history (was the server restarted?)"
        )

    def _finish_from_history(self, entry: dict[str, Any]) -> RunResult:
        self.settled = True
        try:
            result = result_from_history(self.client.base_url, self.prompt_id, entry)
        except ComfyExecutionFailed as exc:
            if self.cancel_sent:
                raise self._cancelled_error("it ended with an error first") from exc
            raise
        if self.cancel_sent:
            raise self._cancelled_error("it had already finished")
        return result

    async def _timed_out(self, total_timeout_s: float) -> ComfyUnavailable:
        await self.client._cancel_quietly(self.prompt_id)
        self.settled = True
        where = f" (last node: {self.tracker.current_node})" if self.tracker.current_node else ""
        return ComfyUnavailable(
            f"prompt {self.prompt_id} did not finish within {total_timeout_s:g} s on ComfyUI at "
            f"{self.client.base_url}{where}; it was cancelled there"
        )

    def _cancelled_error(self, how: str) -> ComfyInterrupted:
        return ComfyInterrupted(f"prompt {self.prompt_id} was cancelled on ComfyUI at {self.client.base_url}; {how}")


# --------------------------------------------------------------------------- helpers


async def _watch(cancelled: asyncio.Event, events: asyncio.Queue[tuple[str, Any]]) -> None:
    await cancelled.wait()
    events.put_nowait((_Event.CANCEL, None))


async def _next_event(events: asyncio.Queue[tuple[str, Any]], timeout: float) -> tuple[str | None, Any]:
    try:
        if timeout <= 0 or not events.empty():  # a message already here: no task and timer for wait_for to make
            return events.get_nowait()
        return await asyncio.wait_for(events.get(), timeout)
    except (TimeoutError, asyncio.QueueEmpty):
        return None, None


def _decode_text(frame: str | bytes) -> Any:
    if not isinstance(frame, str):
        return None
    try:
        return msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return None


def _decode_or_none(response: Response) -> Any:
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None


def _validate_base_url(base_url: str) -> str:
    """http(s)://host[:port][/prefix] without credentials, query or fragment; returned without a trailing /."""
    problem = None
    try:
        split = urllib.parse.urlsplit(base_url.strip()) if isinstance(base_url, str) else None
        if split is None:
            problem = "it is not a string"
        elif split.scheme not in ("http", "https"):
            problem = "it must start with http:// or https://"
        elif not split.hostname:
            problem = "it has no host"
        elif split.username is not None or split.password is not None:
            problem = "credentials do not belong in the URL; pass them as auth_header"
        elif split.query or split.fragment:
            problem = "it must not have a query or fragment"
        else:
            split.port  # noqa: B018 - raises ValueError for a port outside 0-65535 or not a number
    except ValueError as exc:
        problem = f"it is malformed ({exc})"
    if problem is not None or split is None:
        raise ValueError(f"invalid ComfyUI base_url {base_url!r}: {problem}; expected http(s)://host[:port][/prefix]")
    return urllib.parse.urlunsplit((split.scheme, split.netloc, split.path.rstrip("/"), "", ""))


def _parse_auth_header(auth_header: str) -> tuple[str, str]:
    name, separator, value = auth_header.partition(":")
    name, value = name.strip(), value.strip()
    if not separator or not _HEADER_NAME.match(name) or not value or "\n" in value or "\r" in value:
        raise ValueError("auth_header must look like 'Authorization: Bearer <token>' (a header name, ':', a value)")
    return name, value


def _multipart(
    fields: dict[str, str], file_field: str, filename: str, data: bytes, content_type: str
) -> tuple[bytes, str]:
    """A multipart/form-data body (the text fields, then the file) and its Content-Type."""
    boundary = secrets.token_hex(16)
    # Quotes and line breaks in a file name are escaped as browsers (and httpx) do: they would end the header.
    quoted = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{quoted}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
    )
    parts += [data, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _check_id(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
