"""The ComfyUI test double replayed against the exchanges recorded from a real ComfyUI 0.3.64.

Every test drives the double over real sockets and compares what comes back with a recording in
`protocol_dir` (status, headers, JSON structure, WebSocket message sequences), so the double cannot
drift from the real server without a test failing. Values that are random by nature (prompt ids,
timestamps, colours) are mapped or ignored; everything else is compared.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import io
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from doubles.comfyui import PROTOCOL_DIR, ComfyUIDouble
from doubles.png import encode_solid_png, png_size, png_text
from doubles.workflows import TXT2IMG
from PIL import Image

Frame = dict[str, Any]
DoubleFactory = Callable[..., Awaitable[ComfyUIDouble]]
DOUBLE_SCRIPT = Path(__file__).resolve().parents[1] / "doubles" / "comfyui.py"
RED_PNG = encode_solid_png(2, 2, (255, 0, 0))
GREEN_PNG = encode_solid_png(2, 2, (0, 255, 0))


# --------------------------------------------------------------------------- recordings


class Recordings:
    """Read access to the recorded exchanges and to the workflows they were made with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        spec = importlib.util.spec_from_file_location("recorded_workflows", folder / "tools" / "workflows.py")
        assert spec is not None and spec.loader is not None
        self.workflows: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.workflows)

    def http(self, name: str) -> dict[str, Any]:
        return json.loads((self.folder / name).read_text(encoding="utf-8"))

    def ws(self, name: str) -> list[dict[str, Any]]:
        lines = (self.folder / name).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def frames(self, name: str) -> list[Frame]:
        """The frames a socket received, in order: JSON messages, and binary frame descriptions."""
        out: list[Frame] = []
        for entry in self.ws(name):
            if entry["dir"] == "recv" and entry["kind"] == "text":
                out.append(entry["msg"])
            elif entry["dir"] == "recv" and entry["kind"] == "binary":
                out.append({"binary": entry["binary"]})
        return out

    def note(self, name: str, prefix: str) -> dict[str, Any]:
        return next(e for e in self.ws(name) if e["dir"] == "note" and e["note"].startswith(prefix))


@pytest.fixture(scope="session")
def rec(protocol_dir: Path) -> Recordings:
    return Recordings(protocol_dir)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def make_double() -> AsyncIterator[DoubleFactory]:
    started: list[ComfyUIDouble] = []

    async def factory(**kwargs: Any) -> ComfyUIDouble:
        double = ComfyUIDouble(**kwargs)
        await double.start()
        started.append(double)
        return double

    yield factory
    for double in started:
        await double.stop()


@pytest.fixture
async def comfy(make_double: DoubleFactory) -> ComfyUIDouble:
    return await make_double(work_seconds=0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --------------------------------------------------------------------------- WebSocket client


def describe_binary(data: bytes) -> Frame:
    """A binary frame described like the recorder did (event type, image format or metadata, size)."""
    (event,) = struct.unpack(">I", data[:4])
    described: dict[str, Any] = {"event_type": event}
    image = data[4:]
    if event == 1:
        described["image_format_code"] = struct.unpack(">I", data[4:8])[0]
        image = data[8:]
    elif event == 4:
        (length,) = struct.unpack(">I", data[4:8])
        described["metadata_len"] = length
        described["metadata"] = json.loads(data[8 : 8 + length])
        image = data[8 + length :]
    size = png_size(image)
    if size is not None:
        described["image_width"], described["image_height"] = size
    return {"binary": described}


class WSClient:
    """A WebSocket that records every frame it receives and can wait for one."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.closed = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        double: ComfyUIDouble,
        client_id: str | None = None,
        *,
        path: str = "/ws",
        feature_flags: dict[str, Any] | None = None,
    ) -> WSClient:
        url = f"ws://127.0.0.1:{double.port}{path}" + (f"?clientId={client_id}" if client_id else "")
        client = cls(await session.ws_connect(url, max_msg_size=0))
        if feature_flags is not None:
            await client.ws.send_json({"type": "feature_flags", "data": feature_flags})
        await client.wait_for(lambda frame: frame.get("type") == "status")
        return client

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(message.data))
            elif message.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(describe_binary(message.data))
            self._changed.set()
        self.closed = True
        self._changed.set()

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            for frame in self.frames:
                if predicate(frame):
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                raise AssertionError(f"frame not received; got {[f.get('type', 'binary') for f in self.frames]}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    async def wait_done(self, prompt_id: str, timeout: float = 5.0) -> None:
        await self.wait_for(lambda frame: is_executing(frame, None, prompt_id), timeout)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader

    def count(self, kind: str) -> int:
        return sum(1 for frame in self.frames if frame.get("type") == kind)


def is_executing(frame: Frame, node: str | None, prompt_id: str | None = None) -> bool:
    if frame.get("type") != "executing" or frame["data"].get("node") != node:
        return False
    return prompt_id is None or frame["data"].get("prompt_id") == prompt_id


async def settle(ws: WSClient, idle_statuses: int) -> None:
    """Wait for the n-th `queue_remaining: 0` status, then a moment for stray frames to show up."""
    await ws.wait_for(lambda _: statuses(ws.frames).count(0) >= idle_statuses)
    await asyncio.sleep(0.05)


def is_status(remaining: int) -> Callable[[Frame], bool]:
    return lambda frame: (
        frame.get("type") == "status" and frame["data"]["status"]["exec_info"]["queue_remaining"] == remaining
    )


# --------------------------------------------------------------------------- comparison helpers


def _label(labels: dict[str, str], prompt_id: Any) -> Any:
    """Prompt ids are random: name them P0, P1... by order of first appearance."""
    return labels.setdefault(prompt_id, f"P{len(labels)}") if isinstance(prompt_id, str) else prompt_id


def _binary_key(described: dict[str, Any], labels: dict[str, str]) -> tuple[Any, ...]:
    metadata = described.get("metadata")
    meta = (
        None
        if metadata is None
        else tuple((k, _label(labels, v) if k == "prompt_id" else v) for k, v in metadata.items())
    )
    return (
        "binary",
        described["event_type"],
        described.get("image_format_code"),
        described.get("metadata_len"),
        meta,
        described.get("image_width"),
        described.get("image_height"),
    )


def _output_key(output: Any) -> Any:
    if isinstance(output, dict) and "images" in output:
        return tuple((image["type"], image["subfolder"], tuple(image)) for image in output["images"])
    return None if output is None else tuple(output)


def _details(kind: str, data: dict[str, Any]) -> Any:
    """The parts of a message's data that are deterministic for a given scenario."""
    if kind == "status":
        return data["status"]["exec_info"]["queue_remaining"], "sid" in data
    if kind == "progress_state":
        return tuple(
            (node, state["state"], repr(state["value"]), repr(state["max"]), tuple(state))
            for node, state in data["nodes"].items()
        )
    if kind in ("executing", "progress"):
        return data.get("node"), data.get("display_node"), data.get("value"), data.get("max")
    if kind == "executed":
        return data["node"], _output_key(data["output"])
    if kind == "execution_cached":
        return tuple(data["nodes"])
    if kind == "execution_interrupted":
        return data["node_id"], data["node_type"], tuple(sorted(data["executed"]))
    if kind == "execution_error":
        return (
            data["node_id"],
            data["node_type"],
            tuple(sorted(data["executed"])),
            data["exception_type"],
            tuple(data["current_inputs"]),
            tuple(sorted(data["current_outputs"])),
        )
    if kind == "feature_flags":
        return tuple(sorted(data.items()))
    return None


def normalize(frames: list[Frame]) -> list[tuple[Any, ...]]:
    labels: dict[str, str] = {}
    out = []
    for frame in frames:
        if "binary" in frame:
            out.append(_binary_key(frame["binary"], labels))
            continue
        kind, data = frame["type"], frame["data"]
        out.append((kind, tuple(data), _details(kind, data), _label(labels, data.get("prompt_id"))))
    return out


def split_jobs(frames: list[Frame]) -> list[list[Frame]]:
    """Frames cut after each `executing {node: null}` (jobs that ran one after the other)."""
    jobs: list[list[Frame]] = [[]]
    for frame in frames:
        jobs[-1].append(frame)
        if is_executing(frame, None):
            jobs.append([])
    return jobs[:-1] if not jobs[-1] else jobs


def for_prompt(frames: list[Frame], prompt_id: str) -> list[Frame]:
    return [f for f in frames if "binary" not in f and f["data"].get("prompt_id") == prompt_id]


def statuses(frames: list[Frame]) -> list[int]:
    return [f["data"]["status"]["exec_info"]["queue_remaining"] for f in frames if f.get("type") == "status"]


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool | str):
        return type(value).__name__
    return "number" if isinstance(value, int | float) else type(value).__name__


EXACT_KEYS = {"type", "status_str", "completed", "class_type", "node_type", "subfolder", "message"}


def assert_same_shape(actual: Any, expected: Any, path: str = "$") -> None:
    """Same keys recursively, same JSON kinds, and equal values for keys naming a type or status."""
    assert _kind(actual) == _kind(expected), f"{path}: {actual!r} vs recorded {expected!r}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected) or set(actual) == set(expected), (
            f"{path}: keys {list(actual)} vs {list(expected)}"
        )
        for key, value in expected.items():
            if key in EXACT_KEYS and not isinstance(value, dict | list):
                assert actual[key] == value, f"{path}.{key}: {actual[key]!r} vs recorded {value!r}"
            assert_same_shape(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list) and expected and actual:
        pairs = zip(actual, expected, strict=True) if len(actual) == len(expected) else [(actual[0], expected[0])]
        for index, (item, recorded) in enumerate(pairs):
            assert_same_shape(item, recorded, f"{path}[{index}]")


def assert_same_history(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """History bodies are keyed by random prompt ids: compare the entries in order."""
    assert len(actual) == len(expected)
    for mine, recorded in zip(actual.values(), expected.values(), strict=True):
        assert_same_shape(mine, recorded)
        events = [[message[0] for message in entry["status"]["messages"]] for entry in (mine, recorded)]
        assert events[0] == events[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Target = ComfyUIDouble | str  # a double, or the base URL of one running in another process


async def request(session: aiohttp.ClientSession, target: Target, method: str, path: str, **kwargs: Any) -> Reply:
    base = target if isinstance(target, str) else target.url
    async with session.request(method, base + path, **kwargs) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def replay(
    session: aiohttp.ClientSession, double: ComfyUIDouble, recorded: dict[str, Any], **extra: Any
) -> Reply:
    """Send a recorded request again (JSON or raw body, extra headers such as Origin)."""
    req = recorded["request"]
    kwargs: dict[str, Any] = {}
    if "body" in req:
        kwargs["json"] = req["body"]
    elif "body_raw" in req:
        kwargs["data"] = req["body_raw"]
        kwargs["headers"] = {"Content-Type": "application/json"}
    kwargs.update(extra)
    return await request(session, double, req["method"], req["path"], **kwargs)


def assert_same_envelope(reply: Reply, recorded: dict[str, Any]) -> None:
    """Status and the headers a client may look at, as recorded (values or mere presence)."""
    expected = recorded["response"]
    assert reply.status == expected["status"]
    for name in ("Content-Type", "Transfer-Encoding", "Accept-Ranges", "Connection"):
        assert reply.headers.get(name) == expected["headers"].get(name), name
    for name in ("Content-Length", "Etag", "Last-Modified", "Content-Disposition"):
        assert (name in reply.headers) == (name in expected["headers"]), name
    if expected["headers"].get("Content-Length") == "0":
        assert reply.headers["Content-Length"] == "0" and reply.body == b""


async def replayed_as_recorded(
    session: aiohttp.ClientSession, double: ComfyUIDouble, recorded: dict[str, Any], **extra: Any
) -> Reply:
    """`replay`, its status and headers checked against the recording's (assert_same_envelope)."""
    reply = await replay(session, double, recorded, **extra)
    assert_same_envelope(reply, recorded)
    return reply


async def post_prompt(
    session: aiohttp.ClientSession, double: Target, prompt: dict[str, Any], client_id: str | None = None, **extra: Any
) -> str:
    body: dict[str, Any] = {"prompt": copy.deepcopy(prompt), **extra}
    if client_id is not None:
        body["client_id"] = client_id
    reply = await request(session, double, "POST", "/prompt", json=body)
    assert reply.status == 200, reply.body
    return reply.json()["prompt_id"]


def recorded_body(record: dict[str, Any], client_id: str | None) -> dict[str, Any]:
    body = copy.deepcopy(record["request"]["body"])
    if client_id is None:
        body.pop("client_id", None)
    else:
        body["client_id"] = client_id
    return body


async def wait_history(session: aiohttp.ClientSession, double: Target, prompt_id: str) -> dict[str, Any]:
    for _ in range(200):
        body = (await request(session, double, "GET", f"/history/{prompt_id}")).json()
        if body:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{prompt_id} never reached the history")


async def upload(session: aiohttp.ClientSession, double: ComfyUIDouble, name: str, data: bytes, **fields: str) -> Reply:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return await request(session, double, "POST", "/upload/image", data=form)


# --------------------------------------------------------------------------- discovery endpoints


@pytest.mark.parametrize(
    "name",
    [
        "http-get-features.json",
        "http-get-queue-idle.json",
        "http-get-prompt.json",
        "http-get-embeddings.json",
        "http-get-models.json",
        "http-get-object_info-EmptyImage.json",
        "http-get-object_info-unknown-class.json",
        "http-get-api-prefix-queue.json",
    ],
)
async def test_discovery_endpoint_answers_as_recorded(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings, name: str
) -> None:
    recorded = rec.http(name)
    reply = await replayed_as_recorded(http, comfy, recorded)
    assert reply.json() == recorded["response"]["body"]


async def test_system_stats_has_the_recorded_shape_and_the_double_settings(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    recorded = rec.http("http-get-system_stats.json")
    cpu = await make_double(device_name="cpu", vram_total=8 * 1024**3)
    reply = await replayed_as_recorded(http, cpu, recorded)
    assert_same_shape(reply.json(), recorded["response"]["body"])
    device = reply.json()["devices"][0]
    assert (device["name"], device["type"], device["index"], device["vram_total"]) == ("cpu", "cpu", None, 8 * 1024**3)
    assert reply.json()["system"]["comfyui_version"] == recorded["response"]["body"]["system"]["comfyui_version"]
    gpu = await make_double(device_name="cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", vram_total=24 * 1024**3)
    device = (await replay(http, gpu, recorded)).json()["devices"][0]
    assert (device["type"], device["index"], device["vram_total"]) == ("cuda", 0, 24 * 1024**3)


async def test_model_lists_follow_the_double_models(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    bare = await make_double(models={})
    for name in ("http-get-models-checkpoints.json", "http-get-models-unknown-folder-404.json"):
        recorded = rec.http(name)
        reply = await replayed_as_recorded(http, bare, recorded)
        if recorded["response"]["status"] == 200:
            assert reply.json() == recorded["response"]["body"]
    rich = await make_double(models={"checkpoints": ["a.safetensors"], "embeddings": ["bad.pt"]})
    assert (await request(http, rich, "GET", "/models/checkpoints")).json() == ["a.safetensors"]
    assert (await request(http, rich, "GET", "/embeddings")).json() == ["bad"]
    info = (await request(http, rich, "GET", "/object_info/CheckpointLoaderSimple")).json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors"]


async def test_object_info_of_the_used_nodes_matches_recording(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    recorded = rec.http("http-get-object_info-used-nodes.json")
    reply = await replayed_as_recorded(http, comfy, recorded)
    body = reply.json()
    assert len(body) == 478
    for class_type, info in recorded["response"]["body"].items():
        assert body[class_type] == info, class_type


async def test_unknown_routes_origin_check_and_api_prefix(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    for name in ("http-get-api-jobs-404.json", "http-get-jobs-404.json", "http-get-queue-foreign-origin-403.json"):
        recorded = rec.http(name)
        reply = await replayed_as_recorded(http, comfy, recorded, headers=recorded["request"].get("headers"))
        assert reply.body == b""
    same_origin = rec.http("http-get-queue-same-origin.json")
    reply = await replayed_as_recorded(http, comfy, same_origin, headers={"Origin": comfy.url})
    assert reply.json() == same_origin["response"]["body"]
    assert (await request(http, comfy, "GET", "/api/object_info/EmptyImage")).status == 200


# --------------------------------------------------------------------------- POST /prompt validation


# Listed at import time for the parametrize ids; the double finds the recordings at the same place.
ERROR_FILES = sorted(path.name for path in PROTOCOL_DIR.glob("http-post-prompt-error-*.json"))


def _error_view(error: dict[str, Any]) -> dict[str, Any]:
    extra = dict(error["extra_info"])
    trace = extra.pop("traceback", None)
    return {key: error[key] for key in ("type", "message", "details")} | {
        "extra_info": extra,
        "has_traceback": isinstance(trace, list) and all(isinstance(line, str) for line in trace) and bool(trace),
    }


def _validation_view(body: dict[str, Any]) -> dict[str, Any]:
    """Everything of a validation answer except naturally random values and traceback lines."""
    view: dict[str, Any] = {"keys": list(body)}
    if "error" in body:
        view["error"] = _error_view(body["error"])
    view["node_errors"] = {
        node_id: {
            "class_type": entry["class_type"],
            "dependent_outputs": entry["dependent_outputs"],
            "errors": [_error_view(error) for error in entry["errors"]],
        }
        for node_id, entry in body["node_errors"].items()
    }
    return view


def test_every_recorded_validation_error_is_replayed() -> None:
    assert len(ERROR_FILES) == 19


@pytest.mark.parametrize("name", ERROR_FILES)
async def test_validation_error_matches_recording(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings, name: str
) -> None:
    recorded = rec.http(name)
    reply = await replayed_as_recorded(http, comfy, recorded)
    if "body_text" in recorded["response"]:
        assert reply.body.decode() == recorded["response"]["body_text"]
        return
    assert _validation_view(reply.json()) == _validation_view(recorded["response"]["body"])
    if recorded["response"]["status"] != 200:
        assert comfy.prompts_received == [] and comfy.pending == [] and comfy.running is None
        return
    prompt_id = reply.json()["prompt_id"]
    entry = (await wait_history(http, comfy, prompt_id))[prompt_id]
    failing_outputs = {o for errors in reply.json()["node_errors"].values() for o in errors["dependent_outputs"]}
    assert entry["prompt"][4] and not failing_outputs & set(entry["prompt"][4])  # only valid outputs run
    assert entry["status"]["status_str"] == "success"


async def test_number_counts_every_post_and_rejected_prompts_are_not_queued(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    for name in ("http-post-prompt-error-no-prompt-key.json", "http-post-prompt-error-value-above-max.json"):
        assert (await replay(http, comfy, rec.http(name))).status == 400
    assert comfy.prompts_received == [] and comfy.pending == [] and comfy.running is None
    reply = await replay(http, comfy, rec.http("http-post-prompt-no-client_id.json"))
    assert reply.json()["number"] == 2


async def test_missing_node_class_and_missing_model_look_like_the_real_errors(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    recorded_info = rec.http("http-get-object_info-used-nodes.json")["response"]["body"]
    without_blur = {name: info for name, info in recorded_info.items() if name != "ImageBlur"}
    double = await make_double(object_info=without_blur)
    reply = await request(http, double, "POST", "/prompt", json={"prompt": rec.workflows.basic()})
    unknown = rec.http("http-post-prompt-error-unknown-node-class.json")["response"]["body"]
    assert reply.status == 400 and reply.json()["error"]["type"] == unknown["error"]["type"]
    assert reply.json()["error"]["message"] == "Cannot execute because node ImageBlur does not exist."
    models = await make_double(models={"checkpoints": ["mine.safetensors"]})
    reply = await request(http, models, "POST", "/prompt", json={"prompt": TXT2IMG})
    combo = rec.http("http-post-prompt-error-combo-value-not-in-list.json")["response"]["body"]
    error = reply.json()["node_errors"]["4"]["errors"][0]
    assert_same_shape(reply.json()["error"], combo["error"])
    recorded_error = combo["node_errors"]["3"]["errors"][0]
    assert (error["type"], error["message"]) == (recorded_error["type"], recorded_error["message"])
    assert list(error) == list(recorded_error) and list(error["extra_info"]) == list(recorded_error["extra_info"])
    assert error["details"] == "ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in ['mine.safetensors']"


async def test_accepted_prompt_answers(comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings) -> None:
    for name in ("http-post-prompt-success-trivial.json", "http-post-prompt-success-basic.json"):
        recorded = rec.http(name)
        reply = await replayed_as_recorded(http, comfy, recorded)
        assert_same_shape(reply.json(), recorded["response"]["body"])
    own_id = rec.http("http-post-prompt-client-prompt_id.json")
    assert (await replay(http, comfy, own_id)).json()["prompt_id"] == own_id["response"]["body"]["prompt_id"]
    explicit = rec.http("http-post-prompt-explicit-number.json")
    assert (await replay(http, comfy, explicit)).json()["number"] == explicit["response"]["body"]["number"]
    front = await replay(http, comfy, rec.http("http-post-prompt-front-true.json"))
    assert front.json()["number"] == -3
    assert [body["prompt"] for body in comfy.prompts_received][:1] == [
        rec.http("http-post-prompt-success-trivial.json")["request"]["body"]["prompt"]
    ]


# --------------------------------------------------------------------------- WebSocket scenarios


async def test_ws_trivial_job_sequence_and_history(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    ws = await WSClient.open(http, comfy, "trivial-1")
    body = recorded_body(rec.http("http-post-prompt-success-trivial.json"), "trivial-1")
    prompt_id = (await request(http, comfy, "POST", "/prompt", json=body)).json()["prompt_id"]
    await ws.wait_done(prompt_id)
    assert normalize(ws.frames) == normalize(rec.frames("ws-success-trivial.jsonl"))
    assert ws.frames[0]["data"]["sid"] == "trivial-1"
    recorded = rec.http("http-get-history-success-trivial.json")
    reply = await request(http, comfy, "GET", f"/history/{prompt_id}")
    assert_same_envelope(reply, recorded)
    assert_same_history(reply.json(), recorded["response"]["body"])
    entry, recorded_entry = reply.json()[prompt_id], next(iter(recorded["response"]["body"].values()))
    assert entry["outputs"] == recorded_entry["outputs"]
    assert entry["prompt"][2:] == [body["prompt"], {"client_id": "trivial-1"}, ["2"]]


async def test_ws_basic_then_identical_then_partial_rerun(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    recorded = split_jobs(rec.frames("ws-success-basic-then-cached-reruns.jsonl"))
    ws = await WSClient.open(http, comfy, "basic-1")
    first = recorded_body(rec.http("http-post-prompt-success-basic.json"), "basic-1")
    ids = [(await request(http, comfy, "POST", "/prompt", json=first)).json()["prompt_id"]]
    await ws.wait_done(ids[0])
    files_after_first = sorted(p.name for p in comfy.output_dir.rglob("*.png"))
    ids.append(await post_prompt(http, comfy, first["prompt"], "basic-1"))
    await ws.wait_done(ids[1])
    assert sorted(p.name for p in comfy.output_dir.rglob("*.png")) == files_after_first  # cached: no new file
    changed = copy.deepcopy(first["prompt"])
    changed["5"]["inputs"]["value"] = "proto/basic_changed"
    ids.append(await post_prompt(http, comfy, changed, "basic-1"))
    await ws.wait_done(ids[2])
    mine = split_jobs(ws.frames)
    assert normalize(mine[0]) == normalize(recorded[0])
    assert normalize(mine[2]) == normalize(recorded[2])
    _assert_cached_rerun(mine[1], recorded[1], mine[0])
    await _assert_basic_histories(http, comfy, rec, ids)


def _assert_cached_rerun(mine: list[Frame], recorded: list[Frame], first_run: list[Frame]) -> None:
    """A fully cached rerun replays the outputs of the first run; only the output order is free."""
    assert [f["type"] for f in mine] == [f["type"] for f in recorded]
    executed = {f["data"]["node"]: f["data"]["output"] for f in mine if f["type"] == "executed"}
    first = {f["data"]["node"]: f["data"]["output"] for f in first_run if f["type"] == "executed"}
    assert executed == first
    cached = next(f for f in mine if f["type"] == "execution_cached")["data"]["nodes"]
    assert cached == next(f for f in recorded if f["type"] == "execution_cached")["data"]["nodes"]
    final_state = [f for f in mine if f["type"] == "progress_state"][-1]["data"]["nodes"]
    recorded_state = [f for f in recorded if f["type"] == "progress_state"][-1]["data"]["nodes"]
    assert {k: (v["state"], repr(v["value"])) for k, v in final_state.items()} == {
        k: (v["state"], repr(v["value"])) for k, v in recorded_state.items()
    }


async def _assert_basic_histories(
    http: aiohttp.ClientSession, comfy: ComfyUIDouble, rec: Recordings, ids: list[str]
) -> None:
    names = [
        "http-get-history-success-basic.json",
        "http-get-history-success-cached-rerun.json",
        "http-get-history-partially-cached-rerun.json",
    ]
    for prompt_id, name in zip(ids, names, strict=True):
        recorded = rec.http(name)["response"]["body"]
        mine = (await request(http, comfy, "GET", f"/history/{prompt_id}")).json()
        assert_same_history(mine, recorded)
        outputs = mine[prompt_id]["outputs"]
        assert outputs["6"] == next(iter(recorded.values()))["outputs"]["6"]
        assert outputs["8"] == next(iter(recorded.values()))["outputs"]["8"]
    recorded_last_two = rec.http("http-get-history-max_items-2.json")["response"]["body"]
    last_two = (await request(http, comfy, "GET", "/history?max_items=2")).json()
    assert list(last_two) == ids[1:]
    assert_same_history(last_two, recorded_last_two)
    assert list((await request(http, comfy, "GET", "/history?max_items=1&offset=0")).json()) == ids[:1]


async def test_ws_runtime_errors(comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings) -> None:
    corrupt = rec.http("http-post-upload-image-corrupt.json")
    reply = await upload(http, comfy, "corrupt.png", b"this is not a PNG file\n", overwrite="true")
    assert_same_envelope(reply, corrupt)
    assert reply.json() == corrupt["response"]["body"]
    ws = await WSClient.open(http, comfy, "rterr-1")
    first = await post_prompt(http, comfy, rec.workflows.load_image("corrupt.png", "proto/rterr"), "rterr-1")
    await ws.wait_done(first)
    second = await post_prompt(http, comfy, rec.workflows.trivial(5, "../escape"), "rterr-1")
    await ws.wait_done(second)
    assert normalize(ws.frames) == normalize(rec.frames("ws-runtime-error.jsonl"))
    errors = [f["data"] for f in ws.frames if f["type"] == "execution_error"]
    assert errors[0]["exception_message"] == f"cannot identify image file '{comfy.input_dir / 'corrupt.png'}'\n"
    assert errors[1]["exception_message"].startswith("**** ERROR: Saving image outside the output folder")
    for prompt_id, name in (
        (first, "http-get-history-runtime-error.json"),
        (second, "http-get-history-runtime-error-saveimage.json"),
    ):
        recorded = rec.http(name)["response"]["body"]
        assert_same_history((await request(http, comfy, "GET", f"/history/{prompt_id}")).json(), recorded)


@pytest.mark.parametrize(
    ("recording", "blurs", "history"),
    [
        ("ws-interrupt-targeted.jsonl", 3, "http-get-history-interrupted-targeted.json"),
        ("ws-interrupt-global.jsonl", 4, "http-get-history-interrupted.json"),
    ],
)
async def test_ws_interrupt_lands_at_the_next_node(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings, recording: str, blurs: int, history: str
) -> None:
    comfy = await make_double(work_seconds=0.15 * (blurs + 2))
    ws = await WSClient.open(http, comfy, "intr-1")
    prompt_id = await post_prompt(http, comfy, rec.workflows.slow(1, n_blurs=blurs), "intr-1")
    if blurs == 3:  # targeted: a prompt_id that is not running is ignored
        await ws.wait_for(lambda frame: is_executing(frame, "10"))
        ignored = rec.http("http-post-interrupt-nonmatching-prompt_id.json")
        assert_same_envelope(await replay(http, comfy, ignored), ignored)
    await ws.wait_for(lambda frame: is_executing(frame, "11"))
    if blurs == 4:  # the /queue recording was taken during the 4-blur job
        queue = rec.http("http-get-queue-running.json")
        assert_same_shape((await replay(http, comfy, queue)).json(), queue["response"]["body"])
    name = "http-post-interrupt-targeted.json" if blurs == 3 else "http-post-interrupt-global.json"
    body = {"json": {"prompt_id": prompt_id}} if blurs == 3 else {}
    assert_same_envelope(await replay(http, comfy, rec.http(name), **body), rec.http(name))
    await ws.wait_done(prompt_id)
    assert normalize(ws.frames) == normalize(rec.frames(recording))
    recorded = rec.http(history)["response"]["body"]
    assert_same_history((await request(http, comfy, "GET", f"/history/{prompt_id}")).json(), recorded)


async def test_interrupt_while_idle_is_dropped(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    recorded = rec.http("http-post-interrupt-idle.json")
    assert_same_envelope(await replay(http, comfy, recorded), recorded)
    prompt_id = await post_prompt(http, comfy, rec.workflows.trivial(7))
    entry = (await wait_history(http, comfy, prompt_id))[prompt_id]
    assert entry["status"]["status_str"] == "success"


async def test_ws_multi_client_routing(comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings) -> None:
    owner = await WSClient.open(http, comfy, "clientA-1")
    other = await WSClient.open(http, comfy, "clientB-1")
    anonymous = await WSClient.open(http, comfy)
    assert len(anonymous.frames[0]["data"]["sid"]) == 32
    body = recorded_body(rec.http("http-post-prompt-client-prompt_id.json"), "clientA-1")
    await request(http, comfy, "POST", "/prompt", json=body)
    await owner.wait_done(body["prompt_id"])
    for ws in (other, anonymous):
        await ws.wait_for(is_status(0))
    no_client = recorded_body(rec.http("http-post-prompt-no-client_id.json"), None)
    prompt_id = (await request(http, comfy, "POST", "/prompt", json=no_client)).json()["prompt_id"]
    await wait_history(http, comfy, prompt_id)
    for ws in (owner, other, anonymous):
        await settle(ws, idle_statuses=3)
    for ws, name in (
        (owner, "ws-multi-client-A-owner.jsonl"),
        (other, "ws-multi-client-B-other.jsonl"),
        (anonymous, "ws-multi-client-anon-no-clientId.jsonl"),
    ):
        assert normalize(ws.frames) == normalize(rec.frames(name)), name


async def test_ws_reconnect_with_the_same_client_id(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    comfy = await make_double(work_seconds=0.6)
    first = await WSClient.open(http, comfy, "recon-1")
    prompt_id = await post_prompt(http, comfy, rec.workflows.slow(1, n_blurs=2, prefix="proto/recon"), "recon-1")
    await first.wait_for(lambda frame: is_executing(frame, "10"))
    second = await WSClient.open(http, comfy, "recon-1")
    await second.wait_done(prompt_id)
    await asyncio.sleep(0.05)
    assert normalize(first.frames) == normalize(rec.frames("ws-reconnect-first-socket.jsonl"))
    assert normalize(second.frames) == normalize(rec.frames("ws-reconnect-second-socket.jsonl"))
    assert second.frames[1] == {"type": "executing", "data": {"node": "10"}}


async def test_closing_the_detached_socket_also_unregisters_the_new_one(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    """ComfyUI drops sockets by clientId on close, so a client must close its old socket *before*
    opening the new one. The double keeps that pitfall."""
    old = await WSClient.open(http, comfy, "same")
    new = await WSClient.open(http, comfy, "same")
    await old.close()
    await asyncio.sleep(0.02)
    prompt_id = await post_prompt(http, comfy, rec.workflows.trivial(9), "same")
    await wait_history(http, comfy, prompt_id)
    await asyncio.sleep(0.05)
    assert [f["type"] for f in new.frames] == ["status"]  # not even the status broadcasts


async def test_ws_queue_delete_and_clear(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    recording = "ws-queue-delete-and-clear.jsonl"
    comfy = await make_double(work_seconds=0.4)
    wf = rec.workflows
    ws = await WSClient.open(http, comfy, "queue-1")
    first_batch = [wf.slow(1, n_blurs=2, prefix="proto/qA"), wf.trivial(2, "proto/qB"), wf.trivial(3, "proto/qC")]
    a, b, c = [await post_prompt(http, comfy, prompt, "queue-1") for prompt in first_batch]
    await ws.wait_for(lambda frame: is_executing(frame, "10", a))
    await _assert_queue_reply(http, comfy, rec, "http-get-queue-busy.json", running=[a], pending=[b, c])
    for running_or_queued in (a, c):  # history only knows finished prompts: 200 {} until then
        assert (await request(http, comfy, "GET", f"/history/{running_or_queued}")).json() == {}
    for name, target in (("http-post-queue-delete.json", b), ("http-post-queue-delete-running-noop.json", a)):
        assert_same_envelope(await replay(http, comfy, rec.http(name), json={"delete": [target]}), rec.http(name))
    await _assert_queue_reply(http, comfy, rec, "http-get-queue-after-delete.json", running=[a], pending=[c])
    await ws.wait_done(c)
    deleted = rec.http("http-get-history-deleted-from-queue.json")
    assert (await request(http, comfy, "GET", f"/history/{b}")).json() == deleted["response"]["body"] == {}
    second_batch = [wf.slow(4, n_blurs=1, prefix="proto/qD"), wf.trivial(5, "proto/qE"), wf.trivial(6, "proto/qF")]
    d, e, f = [await post_prompt(http, comfy, prompt, "queue-1") for prompt in second_batch]
    await ws.wait_for(lambda frame: is_executing(frame, "10", d))
    clear = rec.http("http-post-queue-clear.json")
    assert_same_envelope(await replay(http, comfy, clear), clear)
    await _assert_queue_reply(http, comfy, rec, "http-get-queue-after-clear.json", running=[d], pending=[])
    await ws.wait_done(d)
    assert statuses(ws.frames) == statuses(rec.frames(recording))
    recorded_ids = rec.note(recording, "posted A") | rec.note(recording, "posted D")
    for mine, letter in ((a, "A"), (b, "B"), (c, "C"), (d, "D"), (e, "E"), (f, "F")):
        expected = for_prompt(rec.frames(recording), recorded_ids[letter])
        assert normalize(for_prompt(ws.frames, mine)) == normalize(expected), letter
    assert comfy.executed_prompt_ids == [a, c, d]


async def _assert_queue_reply(
    http: aiohttp.ClientSession,
    comfy: ComfyUIDouble,
    rec: Recordings,
    name: str,
    running: list[str],
    pending: list[str],
) -> None:
    recorded = rec.http(name)
    reply = await replayed_as_recorded(http, comfy, recorded)
    assert_same_shape(reply.json(), recorded["response"]["body"])
    assert [item[1] for item in reply.json()["queue_running"]] == running
    assert [item[1] for item in reply.json()["queue_pending"]] == pending
    assert comfy.pending == pending and comfy.running == (running[0] if running else None)


async def test_front_and_explicit_number_change_the_run_order(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    comfy = await make_double(work_seconds=0.3)
    ws = await WSClient.open(http, comfy, "front-1")
    slow = await post_prompt(http, comfy, rec.workflows.slow(1, n_blurs=1), "front-1")
    normal = await post_prompt(http, comfy, rec.workflows.trivial(2, "proto/front_a"), "front-1")
    front = await post_prompt(http, comfy, rec.workflows.trivial(3, "proto/front_f"), "front-1", front=True)
    recorded = rec.http("http-get-queue-with-front.json")
    reply = await replay(http, comfy, recorded)
    assert_same_shape(reply.json(), recorded["response"]["body"])
    assert [item[0] < 0 for item in reply.json()["queue_pending"]] == [
        item[0] < 0 for item in recorded["response"]["body"]["queue_pending"]
    ]
    await ws.wait_done(normal)
    recorded_order = [
        f["data"]["prompt_id"] for f in rec.frames("ws-front-priority.jsonl") if f["type"] == "execution_start"
    ]
    note = rec.note("ws-front-priority.jsonl", "posted")
    assert recorded_order == [note["slow"]["prompt_id"], note["f"]["prompt_id"], note["a"]["prompt_id"]]
    assert comfy.executed_prompt_ids == [slow, front, normal]
    assert statuses(ws.frames) == statuses(rec.frames("ws-front-priority.jsonl"))


@pytest.mark.parametrize(
    ("recording", "flags"),
    [
        ("ws-binary-previews-legacy.jsonl", None),
        ("ws-binary-previews-feature-flags.jsonl", {"supports_preview_metadata": True}),
    ],
)
async def test_ws_save_image_websocket_binary_frames(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings, recording: str, flags: dict[str, Any] | None
) -> None:
    ws = await WSClient.open(http, comfy, "bin-1", feature_flags=flags)
    if flags is not None:
        await ws.wait_for(lambda frame: frame.get("type") == "feature_flags")
    prompt_id = await post_prompt(http, comfy, rec.workflows.ws_save(1, batch=3, size=64), "bin-1")
    await ws.wait_done(prompt_id)
    assert normalize(ws.frames) == normalize(rec.frames(recording))
    recorded = rec.http("http-get-history-binary-previews.json")["response"]["body"]
    mine = (await request(http, comfy, "GET", f"/history/{prompt_id}")).json()
    assert_same_history(mine, recorded)
    assert mine[prompt_id]["outputs"] == {}


async def test_ws_prompt_without_client_id_broadcasts_progress(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    observer = await WSClient.open(http, comfy, "observer-1")
    body = recorded_body(rec.http("http-post-prompt-no-client_id-ws_save.json"), None)
    prompt_id = (await request(http, comfy, "POST", "/prompt", json=body)).json()["prompt_id"]
    await wait_history(http, comfy, prompt_id)
    await settle(observer, idle_statuses=2)
    assert normalize(observer.frames) == normalize(rec.frames("ws-no-client_id-broadcasts.jsonl"))


async def test_ws_api_prefix_history_and_png_text_chunks(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    ws = await WSClient.open(http, comfy, "apiws-1", path="/api/ws")
    body = recorded_body(rec.http("http-post-prompt-extra_pnginfo.json"), "apiws-1")
    prompt_id = (await request(http, comfy, "POST", "/api/prompt", json=body)).json()["prompt_id"]
    await ws.wait_done(prompt_id)
    assert normalize(ws.frames) == normalize(rec.frames("ws-api-prefix-success.jsonl"))
    recorded = rec.http("http-get-api-history-prompt_id.json")
    reply = await request(http, comfy, "GET", f"/api/history/{prompt_id}")
    assert_same_envelope(reply, recorded)
    assert_same_history(reply.json(), recorded["response"]["body"])
    image = reply.json()[prompt_id]["outputs"]["2"]["images"][0]
    data = (comfy.output_dir / image["subfolder"] / image["filename"]).read_bytes()
    text = {key: json.loads(value) for key, value in png_text(data).items()}
    expected = rec.http("png-text-chunks-of-output.json")["png_text"]
    assert list(text) == list(expected)
    assert text == {"prompt": body["prompt"], "workflow": body["extra_data"]["extra_pnginfo"]["workflow"]}


# --------------------------------------------------------------------------- uploads and /view


async def test_upload_cases_and_loading_the_upload(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    name = rec.http("http-post-upload-image.json")["request"]["multipart_fields"]["image"]["filename"]
    cases = [
        ("http-post-upload-image.json", RED_PNG, {}),
        ("http-post-upload-image-same-name-same-content.json", RED_PNG, {}),
        ("http-post-upload-image-same-name-other-content.json", GREEN_PNG, {}),
        ("http-post-upload-image-overwrite.json", GREEN_PNG, {"overwrite": "true"}),
        ("http-post-upload-image-subfolder.json", RED_PNG, {"subfolder": "proto_sub", "type": "input"}),
        ("http-post-upload-image-type-temp.json", RED_PNG, {"type": "temp"}),
    ]
    for file, data, fields in cases:
        recorded = rec.http(file)
        reply = await upload(http, comfy, name, data, **fields)
        assert_same_envelope(reply, recorded)
        assert reply.json() == recorded["response"]["body"], file
    assert (comfy.input_dir / name).read_bytes() == GREEN_PNG
    no_file = rec.http("http-post-upload-image-no-file-400.json")
    form = aiohttp.FormData()
    form.add_field("overwrite", "true")
    assert_same_envelope(await request(http, comfy, "POST", "/upload/image", data=form), no_file)
    for file in ("http-get-view-input-uploaded.json", "http-get-view-input-subfolder.json"):
        reply = await replay(http, comfy, rec.http(file))
        assert_same_envelope(reply, rec.http(file))
        assert png_size(reply.body) == (2, 2)
    ws = await WSClient.open(http, comfy, "load-1")
    body = recorded_body(rec.http("http-post-prompt-loadimage-uploaded.json"), "load-1")
    prompt_id = (await request(http, comfy, "POST", "/prompt", json=body)).json()["prompt_id"]
    await ws.wait_done(prompt_id)
    assert normalize(ws.frames) == normalize(rec.frames("ws-success-loadimage-uploaded.jsonl"))
    listed = (await request(http, comfy, "GET", "/object_info/LoadImage")).json()["LoadImage"]
    assert listed["input"]["required"]["image"][0] == sorted([name, "tiny-021624 (1).png"])


async def test_view_answers_as_recorded(comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings) -> None:
    prompt_id = await post_prompt(
        http, comfy, rec.http("http-post-prompt-success-basic.json")["request"]["body"]["prompt"]
    )
    await wait_history(http, comfy, prompt_id)
    for name in ("http-get-view-output.json", "http-get-view-channel-rgb.json"):
        recorded = rec.http(name)
        reply = await replayed_as_recorded(http, comfy, recorded)
        assert reply.headers["Content-Disposition"] == recorded["response"]["headers"]["Content-Disposition"]
        binary = recorded["response"]["body_binary"]
        assert png_size(reply.body) == (binary["image_width"], binary["image_height"])
    temp = (await request(http, comfy, "GET", f"/history/{prompt_id}")).json()[prompt_id]["outputs"]["7"]["images"][0]
    recorded = rec.http("http-get-view-temp.json")
    reply = await request(http, comfy, "GET", "/view", params=temp)
    assert_same_envelope(reply, recorded)
    binary = recorded["response"]["body_binary"]
    assert png_size(reply.body) == (binary["image_width"], binary["image_height"])
    for name in (
        "http-get-view-missing-404.json",
        "http-get-view-traversal-400.json",
        "http-get-view-subfolder-traversal-403.json",
    ):
        assert_same_envelope(await replay(http, comfy, rec.http(name)), rec.http(name))


async def test_view_previews_are_reencoded_as_comfyui_does(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    """`preview=webp;50` as recorded (a WebP); `preview=jpeg;60` a JPEG (the dispatcher's renditions), unless the
    channel asks for alpha (server.py makes a WebP then); each the output's size."""
    prompt_id = await post_prompt(
        http, comfy, rec.http("http-post-prompt-success-basic.json")["request"]["body"]["prompt"]
    )
    await wait_history(http, comfy, prompt_id)
    recorded = rec.http("http-get-view-preview-webp.json")
    reply = await replayed_as_recorded(http, comfy, recorded)
    assert reply.body.hex().startswith(recorded["response"]["body_binary"]["image_magic"][:8])  # RIFF
    output = rec.http("http-get-view-output.json")
    size = (output["response"]["body_binary"]["image_width"], output["response"]["body_binary"]["image_height"])
    for query, kind in (("preview=jpeg;60", "JPEG"), ("preview=jpeg;60&channel=rgba", "WEBP"), ("preview=png", "WEBP")):
        reply = await request(http, comfy, "GET", f"{output['request']['path']}&{query}")
        assert reply.status == 200 and reply.headers["Content-Type"] == f"image/{kind.lower()}", query
        with Image.open(io.BytesIO(reply.body)) as image:
            assert (image.format, image.size) == (kind, size), query


async def test_empty_answers_of_free_and_history_posts(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    prompt_id = await post_prompt(http, comfy, rec.workflows.trivial(1))
    await wait_history(http, comfy, prompt_id)
    free = rec.http("http-post-free.json")
    assert_same_envelope(await replay(http, comfy, free), free)
    delete = rec.http("http-post-history-delete.json")
    assert_same_envelope(await replay(http, comfy, delete, json={"delete": [prompt_id]}), delete)
    after = rec.http("http-get-history-after-delete.json")
    assert (await request(http, comfy, "GET", f"/history/{prompt_id}")).json() == after["response"]["body"]
    await wait_history(http, comfy, await post_prompt(http, comfy, rec.workflows.trivial(2)))
    clear = rec.http("http-post-history-clear.json")
    assert_same_envelope(await replay(http, comfy, clear), clear)
    assert (await request(http, comfy, "GET", "/history")).json() == {}


# --------------------------------------------------------------------------- simulation and faults


async def _run_timed(http: aiohttp.ClientSession, double: ComfyUIDouble, rec: Recordings) -> float:
    ws = await WSClient.open(http, double, "timer")
    started = time.monotonic()
    prompt_id = await post_prompt(http, double, rec.workflows.trivial(1), "timer")
    await ws.wait_done(prompt_id)
    return time.monotonic() - started


async def test_speed_scales_the_job_duration(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    normal, fast = await make_double(work_seconds=0.4), await make_double(work_seconds=0.4, speed=2)
    slow_time, fast_time = await asyncio.gather(_run_timed(http, normal, rec), _run_timed(http, fast, rec))
    assert 0.4 <= slow_time < 0.9  # (the upper bound leaves room for a loaded machine)
    assert 0.35 < fast_time / slow_time < 0.65


async def test_per_prompt_work_seconds_override(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    double = await make_double(work_seconds=5)
    started = time.monotonic()
    prompt_id = await post_prompt(http, double, rec.workflows.trivial(1), extra_data={"double_work_seconds": 0.1})
    await wait_history(http, double, prompt_id)
    assert time.monotonic() - started < 1.0


async def test_sampler_steps_emit_progress(comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings) -> None:
    ws = await WSClient.open(http, comfy, "t2i")
    prompt_id = await post_prompt(http, comfy, TXT2IMG, "t2i")
    await ws.wait_done(prompt_id)
    progress = [f["data"] for f in ws.frames if f["type"] == "progress"]
    assert [(p["node"], p["value"], p["max"]) for p in progress] == [("3", step, 4) for step in range(1, 5)]
    recorded_progress = next(f for f in rec.frames("ws-binary-previews-legacy.jsonl") if f.get("type") == "progress")
    assert list(progress[0]) == list(recorded_progress["data"])
    start = next(i for i, f in enumerate(ws.frames) if is_executing(f, "3"))
    kinds = [f["type"] for f in ws.frames[start : start + 10]]
    assert kinds == ["executing"] + ["progress_state", "progress"] * 4 + ["progress_state"]
    states = [f["data"]["nodes"]["3"] for f in ws.frames if f["type"] == "progress_state" and "3" in f["data"]["nodes"]]
    assert [(s["state"], repr(s["value"]), repr(s["max"])) for s in states[:6]] == [("running", "0.0", "1.0")] + [
        ("running", str(step), "4") for step in range(1, 5)
    ] + [("finished", "4", "4")]
    image = (await request(http, comfy, "GET", f"/history/{prompt_id}")).json()[prompt_id]["outputs"]["9"]["images"][0]
    assert png_size((await request(http, comfy, "GET", "/view", params=image)).body) == (512, 512)


async def test_sampler_previews_come_as_type_1_frames_after_each_progress_as_recorded(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    comfy = await make_double(work_seconds=0.02, sampler_previews=True)
    ws = await WSClient.open(http, comfy, "t2i-previews")
    prompt_id = await post_prompt(http, comfy, TXT2IMG, "t2i-previews")
    await ws.wait_done(prompt_id)
    start = next(i for i, f in enumerate(ws.frames) if is_executing(f, "3"))
    kinds = [f.get("type", "binary") for f in ws.frames[start : start + 14]]
    assert kinds == ["executing"] + ["progress_state", "progress", "binary"] * 4 + ["progress_state"]
    # The same order and header as the recorded frames of a node with steps (SaveImageWebsocket, no metadata).
    recorded = rec.frames("ws-binary-previews-legacy.jsonl")
    first = next(i for i, f in enumerate(recorded) if f.get("type") == "progress")
    recorded_kinds = [f.get("type", "binary") for f in recorded[first - 1 : first + 2]]
    assert recorded_kinds == ["progress_state", "progress", "binary"]
    previews = [f["binary"] for f in ws.frames if "binary" in f]
    assert {(p["event_type"], p["image_format_code"]) for p in previews} == {(1, 2)}
    assert comfy.websocket_images == []  # previews are no SaveImageWebsocket output


async def test_dropped_websockets_leave_http_and_the_running_job_alone(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    comfy = await make_double(work_seconds=0.6)
    ws = await WSClient.open(http, comfy, "cut-1")
    prompt_id = await post_prompt(http, comfy, rec.workflows.ws_save(1, batch=3, size=64), "cut-1")
    await ws.wait_for(lambda frame: is_executing(frame, "1"))
    assert await comfy.drop_websockets() == 1
    history = await wait_history(http, comfy, prompt_id)
    assert history[prompt_id]["status"]["status_str"] == "success" and history[prompt_id]["outputs"] == {}
    assert len(comfy.websocket_images) == 3  # sent, to nobody
    assert not any("binary" in f for f in ws.frames)


def _txt2img(ckpt: str, seed: int) -> dict[str, Any]:
    prompt = copy.deepcopy(TXT2IMG)
    prompt["4"]["inputs"]["ckpt_name"] = ckpt
    prompt["3"]["inputs"]["seed"] = seed
    return prompt


async def test_switching_a_loader_model_costs_time_and_reusing_it_costs_nothing(
    make_double: DoubleFactory, http: aiohttp.ClientSession
) -> None:
    double = await make_double(
        work_seconds=0.05, models={"checkpoints": ["a.safetensors", "b.safetensors"]}, model_switch_seconds=0.6
    )

    async def timed(prompt: dict[str, Any], **extra: Any) -> float:
        started = time.monotonic()
        entry = await wait_history(http, double, await post_prompt(http, double, prompt, **extra))
        assert next(iter(entry.values()))["status"]["completed"] is True
        return time.monotonic() - started

    first_a = await timed(_txt2img("a.safetensors", 1))
    again_a = await timed(_txt2img("a.safetensors", 2))  # a new seed: the sampler runs, the loader is cached
    switch_b = await timed(_txt2img("b.safetensors", 3))
    again_b = await timed(_txt2img("b.safetensors", 4))
    free = await request(http, double, "POST", "/free", json={"unload_models": True, "free_memory": False})
    assert free.status == 200
    after_free = await timed(_txt2img("b.safetensors", 5))
    assert min(first_a, switch_b, after_free) >= 0.6
    assert max(again_a, again_b) < 0.45
    assert double.model_loads == [(("a.safetensors",), 0.6), (("b.safetensors",), 0.6), (("b.safetensors",), 0.6)]


async def test_model_switch_seconds_per_model_file(make_double: DoubleFactory, http: aiohttp.ClientSession) -> None:
    double = await make_double(
        work_seconds=0.02,
        models={"checkpoints": ["big.safetensors", "small.safetensors"]},
        model_switch_seconds={"big.safetensors": 0.5},
    )
    for seed, ckpt in enumerate(["small.safetensors", "big.safetensors"]):
        await wait_history(http, double, await post_prompt(http, double, _txt2img(ckpt, seed)))
    assert double.model_loads == [(("small.safetensors",), 0.0), (("big.safetensors",), 0.5)]


async def test_go_down_refuses_connections_and_go_up_resumes(
    make_double: DoubleFactory, http: aiohttp.ClientSession, rec: Recordings
) -> None:
    double = await make_double(work_seconds=0.3)
    ws = await WSClient.open(http, double, "down-1")
    prompt_id = await post_prompt(http, double, rec.workflows.trivial(1), "down-1")
    await ws.wait_for(lambda frame: is_executing(frame, "1"))
    port = double.port
    await double.go_down()
    await ws.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(double.url + "/queue")
    for _ in range(100):  # the job goes on while the server is unreachable
        if double.running is None:
            break
        await asyncio.sleep(0.02)
    assert double.running is None and double.executed_prompt_ids == [prompt_id]
    await double.go_up()
    assert double.port == port
    async with aiohttp.ClientSession() as fresh:
        entry = (await wait_history(fresh, double, prompt_id))[prompt_id]
    assert entry["status"]["status_str"] == "success"


async def test_hang_holds_requests_and_jobs(make_double: DoubleFactory, rec: Recordings) -> None:
    double = await make_double(work_seconds=0.2)
    async with aiohttp.ClientSession() as session:
        ws = await WSClient.open(session, double, "hang-1")
        prompt_id = await post_prompt(session, double, rec.workflows.trivial(1), "hang-1")
        await ws.wait_for(lambda frame: is_executing(frame, "1"))
        double.hang()
        seen = len(ws.frames)
        _, writer = await asyncio.open_connection("127.0.0.1", double.port)  # TCP is still accepted
        writer.close()
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as impatient:
            with pytest.raises(TimeoutError):
                await impatient.get(double.url + "/queue")
        assert double.running == prompt_id and len(ws.frames) == seen
        double.hang(False)
        await ws.wait_done(prompt_id)
        assert (await request(session, double, "GET", "/queue")).status == 200
        await ws.close()


@pytest.mark.parametrize(("node", "recorded_job"), [(None, 0), ("SaveImage", 1)])
async def test_fail_next_job_reports_execution_error(
    comfy: ComfyUIDouble, http: aiohttp.ClientSession, rec: Recordings, node: str | None, recorded_job: int
) -> None:
    comfy.fail_next_job("torch.OutOfMemoryError", "CUDA out of memory.", node=node)
    ws = await WSClient.open(http, comfy, "fail-1")
    prompt_id = await post_prompt(http, comfy, rec.workflows.trivial(1), "fail-1")
    await ws.wait_done(prompt_id)
    recorded = split_jobs(rec.frames("ws-runtime-error.jsonl"))
    segment = recorded[0] if recorded_job == 0 else recorded[0][:1] + recorded[1]
    assert [(k[0], k[1]) for k in normalize(ws.frames)] == [(k[0], k[1]) for k in normalize(segment)]
    error = next(f["data"] for f in ws.frames if f["type"] == "execution_error")
    recorded_error = next(f["data"] for f in segment if f["type"] == "execution_error")
    assert (error["exception_type"], error["exception_message"]) == ("torch.OutOfMemoryError", "CUDA out of memory.\n")
    assert error["executed"] == recorded_error["executed"] and error["node_id"] == recorded_error["node_id"]
    history = (await request(http, comfy, "GET", f"/history/{prompt_id}")).json()[prompt_id]
    assert (history["status"]["status_str"], history["status"]["completed"]) == ("error", False)
    follow_up = await post_prompt(http, comfy, rec.workflows.trivial(2), "fail-1")
    await ws.wait_done(follow_up)
    assert (await request(http, comfy, "GET", f"/history/{follow_up}")).json()[follow_up]["status"]["completed"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_standalone_process_serves_until_sigterm(rec: Recordings) -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DOUBLE_SCRIPT),
        "--port",
        str(port),
        "--speed",
        "2",
        "--work-seconds",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        assert f"http://127.0.0.1:{port}" in line
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            stats = await request(session, base, "GET", "/system_stats")
            assert_same_shape(stats.json(), rec.http("http-get-system_stats.json")["response"]["body"])
            prompt_id = await post_prompt(session, base, rec.workflows.trivial(1))
            entry = (await wait_history(session, base, prompt_id))[prompt_id]
            assert entry["status"]["status_str"] == "success"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
