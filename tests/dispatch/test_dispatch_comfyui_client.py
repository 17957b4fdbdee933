"""The dispatch service's ComfyUI client: parsers checked against the recorded ComfyUI 0.3.64 exchanges, and
the client driven over real sockets against ComfyUIDouble instances (and a few tiny aiohttp servers for what
the double does not cover: a server that is not ComfyUI, one without a WebSocket, header capture)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from doubles.comfyui import ComfyUIDouble
from doubles.png import encode_solid_png, png_size
from doubles.workflows import TXT2IMG

from dispatch_service.comfyui import (
    ComfyClient,
    ComfyError,
    ComfyExecutionFailed,
    ComfyInterrupted,
    ComfyOutputMissing,
    ComfyRejected,
    ComfyUnavailable,
    OutputRef,
    ProgressUpdate,
    RunResult,
    RunTracker,
    WebSocketImage,
    describe_node_errors,
    parse_binary_image,
    parse_queue,
    parse_system_stats,
    rejection_message,
    result_from_history,
)

INSTANCE = "http://comfy.test:8188"


def trivial(color: int, prefix: str = "hub/trivial") -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def blur_chain(color: int, blurs: int = 8) -> dict[str, Any]:
    """Many short nodes: an interrupt lands quickly (at the next node start)."""
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}}
    }
    previous = "1"
    for index in range(blurs):
        node_id = str(10 + index)
        workflow[node_id] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 1, "sigma": 1.0},
        }
        previous = node_id
    workflow["99"] = {"class_type": "SaveImage", "inputs": {"images": [previous, 0], "filename_prefix": "hub/blur"}}
    return workflow


def slow(seconds: float) -> dict[str, Any]:
    return {"double_work_seconds": seconds}


# --------------------------------------------------------------------------- recordings


def recorded(protocol_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((protocol_dir / name).read_text(encoding="utf-8"))


def recorded_body(protocol_dir: Path, name: str) -> Any:
    return recorded(protocol_dir, name)["response"]["body"]


def recorded_frames(protocol_dir: Path, name: str) -> list[dict[str, Any]]:
    lines = (protocol_dir / name).read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return [e["msg"] for e in entries if e["dir"] == "recv" and e["kind"] == "text"]


def history_outcome(protocol_dir: Path, name: str) -> tuple[str, RunResult | ComfyError]:
    (prompt_id, entry), *_ = recorded_body(protocol_dir, name).items()
    try:
        return prompt_id, result_from_history(INSTANCE, prompt_id, entry)
    except ComfyError as exc:
        return prompt_id, exc


def replay(
    frames: list[dict[str, Any]], prompt_id: str, nodes: Collection[str] = ()
) -> tuple[RunResult | ComfyError, list[ProgressUpdate]]:
    """Feed a recorded WebSocket session to a RunTracker for one prompt, as `run` does."""
    tracker, progress = RunTracker(INSTANCE, prompt_id, nodes), []
    for frame in frames:
        if not tracker.concerns(frame):
            continue
        try:
            update = tracker.apply(frame)
        except ComfyError as exc:
            return exc, progress
        if update is not None:
            progress.append(update)
        if tracker.finished:
            return tracker.result(), progress
    raise AssertionError(f"the recorded session never finished prompt {prompt_id}")


def same_outcome(left: RunResult | ComfyError, right: RunResult | ComfyError) -> bool:
    if isinstance(left, RunResult) or isinstance(right, RunResult):
        return left == right
    return type(left) is type(right) and str(left) == str(right)


# --------------------------------------------------------------------------- parsers against the recordings


def test_system_stats_and_queue_parsers_read_the_recordings(protocol_dir: Path) -> None:
    info = parse_system_stats(recorded_body(protocol_dir, "http-get-system_stats.json"))
    assert (info.comfyui_version, info.device_name, info.device_type) == ("0.3.64", "cpu", "cpu")
    assert (info.vram_total, info.vram_free) == (25276063744, 23959756800)
    assert info.raw["system"]["python_version"].startswith("3.11")

    front = parse_queue(recorded_body(protocol_dir, "http-get-queue-with-front.json"))
    assert front.running == ["c90f0d8e-7204-45e0-9efa-eced6d4c5fac"]
    assert front.pending == ["96a6ac59-7df7-42ee-8442-b51225a590bd", "d9998fd1-e72f-4120-bcc9-893825fbd44c"]
    idle = parse_queue(recorded_body(protocol_dir, "http-get-queue-idle.json"))
    assert (idle.running, idle.pending) == ([], [])
    for not_comfy in ({"ok": True}, [], {"queue_running": [["x"]], "queue_pending": []}):
        with pytest.raises(ValueError):
            parse_queue(not_comfy)
    with pytest.raises(ValueError):
        parse_system_stats({"status": "ok"})


def test_history_parser_reads_outputs_cache_and_errors(protocol_dir: Path) -> None:
    _, basic = history_outcome(protocol_dir, "http-get-history-success-basic.json")
    assert basic == RunResult(
        prompt_id="193e6328-7a83-4a4a-805a-b498cf15c506",
        outputs=[  # PreviewAny's {"text": [...]} is no file
            OutputRef("7", "ComfyUI_temp_txlyb_00001_.png", "", "temp", "images"),
            OutputRef("6", "basic_00001_.png", "proto", "output", "images"),
        ],
        cached_nodes=[],
    )
    _, cached = history_outcome(protocol_dir, "http-get-history-success-cached-rerun.json")
    assert isinstance(cached, RunResult) and cached.outputs == basic.outputs
    assert cached.cached_nodes == ["1", "2", "3", "4", "5", "6", "7", "8"]

    _, failed = history_outcome(protocol_dir, "http-get-history-runtime-error.json")
    assert isinstance(failed, ComfyExecutionFailed)
    assert (failed.node_id, failed.node_type, failed.exception_type) == ("1", "LoadImage", "PIL.UnidentifiedImageError")
    assert "node 1 (LoadImage) failed with PIL.UnidentifiedImageError: cannot identify image file" in str(failed)
    assert failed.traceback and INSTANCE in str(failed)
    _, save_failed = history_outcome(protocol_dir, "http-get-history-runtime-error-saveimage.json")
    assert isinstance(save_failed, ComfyExecutionFailed) and save_failed.node_type == "SaveImage"
    assert str(save_failed).endswith("Saving image outside the output folder is not allowed.")

    _, stopped = history_outcome(protocol_dir, "http-get-history-interrupted.json")
    assert isinstance(stopped, ComfyInterrupted) and (stopped.node_id, stopped.node_type) == ("12", "ImageBlur")
    _, previews_only = history_outcome(protocol_dir, "http-get-history-binary-previews.json")
    assert isinstance(previews_only, RunResult) and previews_only.outputs == []


@pytest.mark.parametrize(
    ("session", "histories"),
    [
        ("ws-success-trivial.jsonl", ["http-get-history-success-trivial.json"]),
        (
            "ws-success-basic-then-cached-reruns.jsonl",
            [
                "http-get-history-success-basic.json",
                "http-get-history-success-cached-rerun.json",
                "http-get-history-partially-cached-rerun.json",
            ],
        ),
        (
            "ws-runtime-error.jsonl",
            ["http-get-history-runtime-error.json", "http-get-history-runtime-error-saveimage.json"],
        ),
        ("ws-interrupt-targeted.jsonl", ["http-get-history-interrupted-targeted.json"]),
    ],
)
def test_websocket_sessions_give_the_same_outcome_as_history(
    protocol_dir: Path, session: str, histories: list[str]
) -> None:
    """The live path (WebSocket messages) and the fallback (/history) agree on every recorded prompt."""
    frames = recorded_frames(protocol_dir, session)
    for history in histories:
        prompt_id, expected = history_outcome(protocol_dir, history)
        outcome, _ = replay(frames, prompt_id)
        assert same_outcome(outcome, expected), (history, outcome, expected)


def test_progress_messages_become_updates(protocol_dir: Path) -> None:
    frames = recorded_frames(protocol_dir, "ws-binary-previews-legacy.jsonl")
    prompt_id = next(f["data"]["prompt_id"] for f in frames if f["type"] == "progress")
    _, progress = replay(frames, prompt_id, nodes=("1", "2"))  # EmptyImage -> SaveImageWebsocket (3 steps)
    assert [(p.node, p.value, p.max, p.nodes_done) for p in progress] == [
        ("1", 0, 0, 0),  # the first node starts: the job is under way before any step
        ("1", 0, 0, 1),
        ("2", 0, 0, 1),
        ("2", 0, 3, 1),
        ("2", 1, 3, 1),
        ("2", 2, 3, 1),
        ("2", 3, 3, 2),
        ("2", 3, 3, 2),  # execution_success (`run` returns the result then, and reports no progress)
    ]
    assert [p.percent for p in progress] == [0.0, 50.0, 50.0, 50.0, 66.7, 83.3, 99.9, 100.0]
    assert all(p.nodes_total == 2 for p in progress)


def nodes_of_prompt(frames: list[dict[str, Any]], prompt_id: str) -> set[str]:
    """The nodes a recorded prompt ran or took from the cache, as its messages name them."""
    nodes: set[str] = set()
    for frame in frames:
        data = frame.get("data") or {}
        if data.get("prompt_id") == prompt_id:
            nodes.update(data.get("nodes") or [])  # execution_cached's list, progress_state's keys
            if frame["type"] == "executed":
                nodes.add(data["node"])
    return nodes


def test_progress_of_node_only_and_cached_prompts_grows_from_the_first_node(protocol_dir: Path) -> None:
    frames = recorded_frames(protocol_dir, "ws-success-basic-then-cached-reruns.jsonl")
    prompt_ids = list(dict.fromkeys(f["data"]["prompt_id"] for f in frames if f["type"] == "execution_start"))
    first, cached, partial = prompt_ids  # nothing cached; everything cached; only the PrimitiveString changed
    fractions = {}
    for prompt_id in prompt_ids:
        nodes = nodes_of_prompt(frames, prompt_id)
        assert len(nodes) == 8
        outcome, progress = replay(frames, prompt_id, nodes)
        assert isinstance(outcome, RunResult)
        fractions[prompt_id] = [p.fraction for p in progress]
        assert fractions[prompt_id] == sorted(fractions[prompt_id]) and fractions[prompt_id][-1] == 1.0
    # No sampler in it, yet a step for every node: 8 nodes run one after the other.
    assert len(set(fractions[first])) >= 8 and fractions[first][0] == 0.0
    assert fractions[cached] == [0.999, 1.0]  # all eight from the cache: done before any node runs
    assert 0.0 < fractions[partial][0] < 1.0  # the cached ones count at once, the changed ones follow


def error_files(protocol_dir: Path) -> list[str]:
    names = sorted(p.name for p in protocol_dir.glob("http-post-prompt-error-*.json"))
    return [n for n in names if isinstance(recorded(protocol_dir, n)["response"].get("body"), dict)]


def test_every_recorded_rejection_is_described(protocol_dir: Path) -> None:
    """Each message names every failing node, its class and (where ComfyUI says) the input."""
    names = error_files(protocol_dir)
    assert len(names) >= 17
    for name in names:
        body = recorded_body(protocol_dir, name)
        message = rejection_message(INSTANCE, body.get("error"), body["node_errors"])
        assert message.startswith(f"ComfyUI at {INSTANCE} rejected the workflow: "), name
        for node_id, entry in body["node_errors"].items():
            assert f"node {node_id} ({entry['class_type']})" in message, name
            for error in entry["errors"]:
                if "input_name" in error["extra_info"]:
                    assert f"input '{error['extra_info']['input_name']}'" in message, name
        if not body["node_errors"]:
            assert body["error"]["message"] in message, name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "combo-value-not-in-list",
            "node 3 (ImageScale) input 'upscale_method': value not in list: 'sharpest' "
            "(allowed: 'nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos')",
        ),
        ("missing-required-input", "node 1 (EmptyImage) input 'width': required input is missing"),
        ("value-above-max", "node 1 (EmptyImage) input 'width': value 999999 bigger than max of 16384"),
        (
            "invalid-int-value",
            "node 1 (EmptyImage) input 'width': 'abc' is not a valid INT value "
            "(invalid literal for int() with base 10: 'abc')",
        ),
        (
            "return-type-mismatch",
            "node 2 (SaveImage) input 'images': output 0 of node 3 gives STRING, but the input takes IMAGE",
        ),
        (
            "link-to-missing-node",
            "node 2 (SaveImage): a link points to node '42', which is not in the workflow (KeyError)",
        ),
        (
            "unknown-node-class",
            "Cannot execute because node NoSuchNode does not exist. (Node ID '#1'); "
            "the node class NoSuchNode is not installed on this instance",
        ),
        ("loadimage-missing-file", "node 1 (LoadImage) input 'image': custom validation failed for node: image - "),
        ("partially-valid-accepted", "node 3 (ImageInvert) input 'image': required input is missing"),
    ],
)
def test_rejection_messages_read_well(protocol_dir: Path, name: str, expected: str) -> None:
    body = recorded_body(protocol_dir, f"http-post-prompt-error-{name}.json")
    assert expected in rejection_message(INSTANCE, body.get("error"), body["node_errors"])


def test_missing_model_is_called_not_installed() -> None:
    node_errors = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "dependent_outputs": ["9"],
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "ckpt_name: 'x.safetensors' not in (list of length 40)",
                    "extra_info": {"input_name": "ckpt_name", "input_config": None, "received_value": "x.safetensors"},
                }
            ],
        }
    }
    assert describe_node_errors(node_errors) == [
        "node 4 (CheckpointLoaderSimple) input 'ckpt_name': value not in list: 'x.safetensors' "
        "(not installed on this instance)"
    ]


# --------------------------------------------------------------------------- doubles and helpers


class RecordingDouble(ComfyUIDouble):
    """The double, noting every HTTP request (method, path) it receives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests: list[tuple[str, str]] = []

    def _build_app(self) -> web.Application:
        app = super()._build_app()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append((request.method, request.path))
            return await handler(request)

        app.middlewares.append(record)
        return app

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, path in self.requests if m == method and path.startswith(prefix))


class JobsApiDouble(RecordingDouble):
    """A newer ComfyUI: the double plus `GET /api/jobs/{id}` and `POST /api/jobs/{id}/cancel` (as in
    comfy_execution/jobs.py: 404 {"error": "Job not found"}, {"cancelled": bool})."""

    def _build_app(self) -> web.Application:
        app = super()._build_app()
        app.router.add_post("/api/jobs/{job_id}/cancel", self._post_job_cancel)
        return app

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")
        if len(parts) == 4 and parts[1:3] == ["api", "jobs"] and parts[3]:
            return self._job(parts[3])
        return await super()._not_found(request)

    def _job(self, job_id: str) -> web.Response:
        if job_id in self.history:
            entry = self.history[job_id]
            status = "completed" if entry["status"]["status_str"] == "success" else "failed"
            body = {"id": job_id, "status": status, "outputs": entry["outputs"], "execution_status": entry["status"]}
            return web.json_response(body)
        if self.running == job_id:
            return web.json_response({"id": job_id, "status": "in_progress"})
        if job_id in self.pending:
            return web.json_response({"id": job_id, "status": "pending"})
        return web.json_response({"error": "Job not found"}, status=404)

    async def _post_job_cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if self.running == job_id:
            self._interrupt_requested = True  # the double's own interrupt flag, as POST /interrupt sets it
            return web.json_response({"cancelled": True})
        if job_id in self.pending:
            self._delete_pending(job_id)
            return web.json_response({"cancelled": True})
        return web.json_response({"cancelled": False})


DoubleFactory = Callable[..., Awaitable[ComfyUIDouble]]


@pytest.fixture
async def make_double() -> AsyncIterator[DoubleFactory]:
    started: list[ComfyUIDouble] = []

    async def factory(kind: type[ComfyUIDouble] = RecordingDouble, **kwargs: Any) -> ComfyUIDouble:
        double = kind(**{"work_seconds": 0.02, **kwargs})
        await double.start()
        started.append(double)
        return double

    yield factory
    for double in started:
        double.hang(False)
        await double.stop()


@pytest.fixture
async def comfy(make_double: DoubleFactory) -> RecordingDouble:
    double = await make_double()
    assert isinstance(double, RecordingDouble)
    return double


@pytest.fixture
async def client(comfy: ComfyUIDouble) -> AsyncIterator[ComfyClient]:
    async with ComfyClient(comfy.url, timeout_s=2.0) as comfy_client:
        yield comfy_client


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def read_output(client: ComfyClient, ref: OutputRef) -> tuple[str, int | None, bytes, int]:
    async with client.open_output(ref) as stream:
        chunks = [chunk async for chunk in stream.chunks()]
        return stream.content_type, stream.size, b"".join(chunks), len(chunks)


# --------------------------------------------------------------------------- discovery and uploads


async def test_discovery_parses_the_double(make_double: DoubleFactory) -> None:
    double = await make_double(device_name="NVIDIA H100", vram_total=80 * 1024**3, models={"loras": ["a.safetensors"]})
    async with ComfyClient(double.url + "/", timeout_s=2) as client:  # a trailing slash is fine
        info = await client.system_stats()
        assert (info.comfyui_version, info.device_name, info.device_type) == ("0.3.64", "NVIDIA H100", "cuda")
        assert (info.vram_total, info.vram_free) == (80 * 1024**3, 80 * 1024**3)
        queue = await client.queue()
        assert (queue.running, queue.pending) == ([], [])
        object_info = await client.object_info()
        assert {"KSampler", "SaveImage", "LoadImage"} <= set(object_info)
        assert object_info["SaveImage"]["output_node"] is True
        assert await client.models("loras") == ["a.safetensors"]
        assert await client.models("checkpoints") == []
        assert await client.models("no_such_folder") == []  # ComfyUI answers 404
        with pytest.raises(ValueError, match="folder"):
            await client.models("../etc")


async def test_upload_then_load_the_image(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    image = encode_solid_png(3, 2, (0, 128, 255))
    name = await client.upload_image(image, "input-1.png")
    assert name == "hub/input-1.png"
    assert (comfy.input_dir / "hub" / "input-1.png").read_bytes() == image
    assert await client.upload_image(encode_solid_png(3, 2, (1, 2, 3)), "input-1.png") == name  # overwritten
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hub/loaded"}},
    }
    result = await client.run(workflow, prompt_id="load-1")
    (ref,) = result.outputs
    _, _, body, _ = await read_output(client, ref)
    assert png_size(body) == (3, 2)
    with pytest.raises(ValueError, match="filename"):
        await client.upload_image(image, "../x.png")


# --------------------------------------------------------------------------- runs

# The recordings' `ws_save` workflow: its images come only as binary WebSocket frames.
WS_SAVE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 3, "color": 0x3366CC}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
}


async def test_run_keeps_the_images_a_savewebsocket_node_sends_and_not_sampler_previews(
    make_double: DoubleFactory,
) -> None:
    comfy = await make_double(sampler_previews=True)
    async with ComfyClient(comfy.url, timeout_s=2.0) as client:
        saved = await client.run(WS_SAVE, prompt_id="ws-save-1")
        assert saved.outputs == []  # nothing in `executed` or the history
        assert [image.data for image in saved.images] == comfy.websocket_images and len(saved.images) == 3
        assert {(i.node_id, i.content_type, i.extension) for i in saved.images} == {("2", "image/png", "png")}
        assert png_size(saved.images[0].data) == (48, 32)
        drawn = await client.run(TXT2IMG, prompt_id="t2i-previews")  # a preview frame with each sampler step
        assert drawn.images == [] and [ref.node_id for ref in drawn.outputs] == ["9"]


def _ws_save(width: int, height: int, batch: int) -> dict[str, Any]:
    empty = {"width": width, "height": height, "batch_size": batch, "color": 0x3366CC}
    return {"1": {"class_type": "EmptyImage", "inputs": empty}, "2": WS_SAVE["2"]}


async def test_runs_at_once_share_the_instance_websocket_each_hearing_only_its_prompt(
    make_double: DoubleFactory,
) -> None:
    """One WebSocket per instance: every prompt names its client id, its messages are routed by prompt id and its
    binary images (which name no prompt) to the prompt running then. A socket that drops is opened again (a new
    client id) for the next run, which is followed live again (its images come only over the socket)."""
    comfy = await make_double(sampler_previews=True)
    steps: dict[str, list[tuple[int, int]]] = {"t2i": [], "big": [], "small": []}

    def noting(name: str) -> Callable[[ProgressUpdate], Awaitable[None]]:
        async def on_progress(update: ProgressUpdate) -> None:
            steps[name].append((update.value, update.max))

        return on_progress

    async with ComfyClient(comfy.url, timeout_s=2.0) as client:
        drawn, big, small = await asyncio.gather(
            client.run(TXT2IMG, prompt_id="shared-t2i", on_progress=noting("t2i")),
            client.run(_ws_save(48, 32, 3), prompt_id="shared-big", on_progress=noting("big")),
            client.run(_ws_save(16, 8, 1), prompt_id="shared-small", on_progress=noting("small")),
        )
        assert drawn.images == [] and [ref.node_id for ref in drawn.outputs] == ["9"]  # previews not kept
        assert [png_size(image.data) for image in big.images] == [(48, 32)] * 3
        assert [png_size(image.data) for image in small.images] == [(16, 8)]
        assert [step for step in steps["t2i"] if step[1] == 4] == [(step, 4) for step in range(1, 5)]
        assert all(step[1] != 4 for step in steps["big"] + steps["small"])  # the sampler's steps are t2i's
        client_ids = {body["client_id"] for body in comfy.prompts_received}
        assert len(client_ids) == 1

        assert await client._drop_websockets_for_test() == 1
        again = await client.run(_ws_save(8, 8, 2), prompt_id="shared-after-drop")
        assert [png_size(image.data) for image in again.images] == [(8, 8)] * 2
        assert comfy.prompts_received[-1]["client_id"] not in client_ids


def test_binary_frames_parse_as_recorded_types() -> None:
    png = encode_solid_png(2, 2, (1, 2, 3))
    legacy = (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + png
    assert parse_binary_image(legacy) == (None, None, "image/png", png)
    jpeg = (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\xff\xd8\xff"
    assert parse_binary_image(jpeg) == (None, None, "image/jpeg", b"\xff\xd8\xff")
    metadata = json.dumps({"node_id": "2", "prompt_id": "p-1", "image_type": "image/png"}).encode()
    with_metadata = (4).to_bytes(4, "big") + len(metadata).to_bytes(4, "big") + metadata + png
    assert parse_binary_image(with_metadata) == ("p-1", "2", "image/png", png)
    text = (3).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"2" + b"loading"
    assert parse_binary_image(text) is None and parse_binary_image(b"\x00\x01") is None
    tracker = RunTracker(INSTANCE, "p-1", ("1", "2"), ("2",))
    tracker.apply_binary(legacy)  # before the node runs: not ours to keep
    tracker.apply({"type": "executing", "data": {"node": "2", "prompt_id": "p-1"}})
    other = (4).to_bytes(4, "big") + len(metadata).to_bytes(4, "big") + metadata.replace(b"p-1", b"p-9") + png
    for frame in (legacy, with_metadata, other, text):
        tracker.apply_binary(frame)
    assert tracker.images == [WebSocketImage("2", png, "image/png", "png")] * 2


async def test_run_reports_progress_and_streams_outputs(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    progress: list[ProgressUpdate] = []

    async def on_progress(update: ProgressUpdate) -> None:
        progress.append(update)

    result = await client.run(TXT2IMG, prompt_id="t2i-1", on_progress=on_progress)
    assert [(p.value, p.max) for p in progress if p.node == "3" and p.max] == [(step, 4) for step in range(1, 5)]
    assert next(p.node for p in progress) == "4"  # from the first node on, sampler or not
    assert [p.fraction for p in progress] == sorted(p.fraction for p in progress)
    assert progress[-1].nodes_total == len(TXT2IMG) and progress[-1].nodes_done == len(TXT2IMG)
    assert result == RunResult("t2i-1", [OutputRef("9", "t2i_00001_.png", "", "output", "images")], [])
    content_type, size, body, chunks = await read_output(client, result.outputs[0])
    assert content_type == "image/png" and png_size(body) == (512, 512) and size == len(body) and chunks >= 1
    assert body == (comfy.output_dir / "t2i_00001_.png").read_bytes()

    again = await client.run(TXT2IMG, prompt_id="t2i-2", on_progress=on_progress)
    assert again.outputs == result.outputs  # identical prompt: nothing ran, the old file is reported
    assert sorted(again.cached_nodes) == sorted(TXT2IMG)
    assert sorted(path.name for path in comfy.output_dir.iterdir()) == ["t2i_00001_.png"]
    client_ids = [body["client_id"] for body in comfy.prompts_received]
    # One WebSocket for the instance: both runs name its client id, their messages told apart by prompt id.
    assert all(c.startswith("hub-") for c in client_ids) and len(set(client_ids)) == 1
    assert [body["prompt_id"] for body in comfy.prompts_received] == ["t2i-1", "t2i-2"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("combo-value-not-in-list", "node 3 (ImageScale) input 'upscale_method': value not in list: 'sharpest'"),
        ("missing-required-input", "node 1 (EmptyImage) input 'width': required input is missing"),
        ("return-type-mismatch", "node 2 (SaveImage) input 'images': output 0 of node 3 gives STRING"),
        ("unknown-node-class", "node NoSuchNode does not exist"),
    ],
)
async def test_invalid_workflows_are_rejected(
    protocol_dir: Path, comfy: ComfyUIDouble, client: ComfyClient, name: str, expected: str
) -> None:
    workflow = recorded(protocol_dir, f"http-post-prompt-error-{name}.json")["request"]["body"]["prompt"]
    with pytest.raises(ComfyRejected) as caught:
        await client.run(workflow, prompt_id=f"bad-{name}")
    assert expected in str(caught.value)
    assert comfy.prompts_received == [] and comfy.executed_prompt_ids == []


async def test_missing_model_is_rejected_with_its_name(client: ComfyClient) -> None:
    workflow = json.loads(json.dumps(TXT2IMG))
    workflow["4"]["inputs"]["ckpt_name"] = "x.safetensors"
    with pytest.raises(ComfyRejected) as caught:
        await client.run(workflow, prompt_id="no-model")
    assert (
        "node 4 (CheckpointLoaderSimple) input 'ckpt_name': value not in list: 'x.safetensors' "
        "(not installed on this instance)" in str(caught.value)
    )
    assert caught.value.node_errors["4"]["class_type"] == "CheckpointLoaderSimple"


async def test_partially_valid_workflow_is_withdrawn(protocol_dir: Path, make_double: DoubleFactory) -> None:
    double = await make_double(work_seconds=0.6)
    workflow = recorded(protocol_dir, "http-post-prompt-error-partially-valid-accepted.json")["request"]["body"]
    async with ComfyClient(double.url, timeout_s=2) as client:
        with pytest.raises(ComfyRejected, match=r"node 3 \(ImageInvert\) input 'image'.*withdrawn"):
            await client.run(workflow["prompt"], prompt_id="partial-1")
    await wait_until(lambda: double.running is None)
    entry = double.history.get("partial-1")
    assert entry is None or entry["status"]["status_str"] == "error"  # never completed
    assert double.pending == []


async def test_runtime_error_names_node_and_exception(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    comfy.fail_next_job("torch.OutOfMemoryError", "CUDA out of memory.", node="SaveImage")
    with pytest.raises(ComfyExecutionFailed) as caught:
        await client.run(trivial(1), prompt_id="oom-1")
    error = caught.value
    assert (error.node_id, error.node_type, error.exception_type) == ("2", "SaveImage", "torch.OutOfMemoryError")
    assert (
        str(error)
        == f"ComfyUI at {comfy.url}: node 2 (SaveImage) failed with torch.OutOfMemoryError: CUDA out of memory."
    )


async def test_cancel_while_queued_removes_the_prompt(comfy: RecordingDouble, client: ComfyClient) -> None:
    blocker = await client.submit(trivial(2), client_id="other", prompt_id="blocker", extra_data=slow(3))
    await wait_until(lambda: comfy.running == blocker)
    cancel = asyncio.Event()
    run = asyncio.create_task(client.run(trivial(3), prompt_id="queued-1", cancelled=cancel))
    await wait_until(lambda: comfy.pending == ["queued-1"])
    started = time.monotonic()
    cancel.set()
    with pytest.raises(ComfyInterrupted, match="withdrawn from the queue before it ran"):
        await run
    assert time.monotonic() - started < 2.0  # well before the 3 s blocker ends
    assert comfy.pending == [] and "queued-1" not in comfy.executed_prompt_ids and comfy.running == blocker
    assert comfy.count("POST", "/interrupt") == 0  # the running prompt is someone else's: left alone
    await client.cancel("queued-1")  # 0.3.64 has no /api/jobs: tried once, then remembered
    assert comfy.count("POST", "/api/jobs/") == 1 and comfy.count("POST", "/queue") == 2


async def test_cancel_while_running_lands_at_the_next_node(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    cancel = asyncio.Event()
    run = asyncio.create_task(client.run(blur_chain(4), prompt_id="running-1", cancelled=cancel, extra_data=slow(2)))
    await wait_until(lambda: comfy.running == "running-1")
    started = time.monotonic()
    cancel.set()
    with pytest.raises(ComfyInterrupted, match="running-1 was interrupted"):
        await run
    assert time.monotonic() - started < 1.5  # ten nodes of 0.2 s (2 s): it stopped at the next one
    assert comfy.history["running-1"]["status"]["status_str"] == "error"


async def test_dropped_websocket_falls_back_to_history(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    run = asyncio.create_task(client.run(trivial(5), prompt_id="drop-1", extra_data=slow(0.6)))
    await wait_until(lambda: comfy.running == "drop-1")
    assert await client._drop_websockets_for_test() == 1
    result = await run
    assert result.outputs == [OutputRef("2", "trivial_00001_.png", "hub", "output", "images")]
    assert (comfy.output_dir / "hub" / "trivial_00001_.png").is_file()


async def test_closing_the_client_ends_its_runs_at_once(make_double: DoubleFactory) -> None:
    """An instance removed or moved while a job runs (the pool closes its client): the runs on its shared socket
    hear it closed and end, not after the stall timeout."""
    double = await make_double()
    client = ComfyClient(double.url, timeout_s=2)
    run = asyncio.create_task(client.run(trivial(7), prompt_id="closed-1", extra_data=slow(5), stall_timeout_s=30))
    await wait_until(lambda: double.running == "closed-1")
    await client.aclose()
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - how it fails is not the point: that it ends now
        await asyncio.wait_for(run, 5)
    assert time.monotonic() - started < 2


async def test_server_going_down_is_unavailable_quickly(make_double: DoubleFactory) -> None:
    double = await make_double()
    async with ComfyClient(double.url, timeout_s=2) as client:
        run = asyncio.create_task(client.run(trivial(6), prompt_id="down-1", extra_data=slow(5)))
        await wait_until(lambda: double.running == "down-1")
        started = time.monotonic()
        await double.go_down()
        with pytest.raises(ComfyUnavailable, match="cannot connect to ComfyUI at " + double.url):
            await run
        assert time.monotonic() - started < 1.5


async def test_hanging_server_is_unavailable_after_the_stall_timeout(make_double: DoubleFactory) -> None:
    double = await make_double()
    async with ComfyClient(double.url, timeout_s=0.4) as client:
        run = asyncio.create_task(client.run(trivial(7), prompt_id="hang-1", stall_timeout_s=0.4, extra_data=slow(5)))
        await wait_until(lambda: double.running == "hang-1")
        started = time.monotonic()
        double.hang()
        with pytest.raises(ComfyUnavailable, match=r"stopped answering: nothing heard about prompt hang-1 for 0\.4 s"):
            await run
        assert 0.4 <= time.monotonic() - started < 2.5
        with pytest.raises(ComfyUnavailable, match=r"did not answer GET /system_stats within 0\.4 s"):
            await client.system_stats()
        # The spare socket opened during hang-1 may still be open: then the submit is what times out.
        hung = r"cannot open the WebSocket of ComfyUI at .*TimeoutError|did not answer POST /prompt within 0\.4 s"
        with pytest.raises(ComfyUnavailable, match=hung):
            await client.run(trivial(7), prompt_id="hang-2")


async def test_a_long_silent_node_is_not_a_stall(comfy: RecordingDouble, client: ComfyClient) -> None:
    result = await client.run(trivial(8), prompt_id="long-1", stall_timeout_s=0.15, extra_data=slow(0.8))
    assert [ref.filename for ref in result.outputs] == ["trivial_00001_.png"]
    assert comfy.count("GET", "/queue") >= 2  # probed while the node was busy, and went on waiting
    assert comfy.count("GET", "/api/jobs/") == 1  # 0.3.64 has no job status route: asked once, then remembered


async def test_prompt_lost_by_the_server_is_unavailable(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    await client.submit(trivial(9), client_id="other", prompt_id="blocker", extra_data=slow(3))
    run = asyncio.create_task(client.run(trivial(10), prompt_id="lost-1", stall_timeout_s=0.3))
    await wait_until(lambda: comfy.pending == ["lost-1"])
    async with httpx.AsyncClient() as http:  # someone else deletes it (a restart loses the queue the same way)
        assert (await http.post(comfy.url + "/queue", json={"delete": ["lost-1"]})).status_code == 200
    with pytest.raises(ComfyUnavailable, match="lost prompt lost-1: it is neither queued, running nor in its history"):
        await asyncio.wait_for(run, 2)


async def test_total_timeout_cancels_the_prompt(comfy: ComfyUIDouble, client: ComfyClient) -> None:
    with pytest.raises(ComfyUnavailable, match=r"did not finish within 0\.3 s .* it was cancelled there"):
        await client.run(blur_chain(11), prompt_id="late-1", total_timeout_s=0.3, extra_data=slow(3))
    await wait_until(lambda: comfy.running is None, timeout=1.0)
    assert comfy.history["late-1"]["status"]["status_str"] == "error"


async def test_newer_server_jobs_api_is_used(make_double: DoubleFactory) -> None:
    double = await make_double(JobsApiDouble)
    assert isinstance(double, JobsApiDouble)
    async with ComfyClient(double.url, timeout_s=2) as client:
        long = await client.run(trivial(12), prompt_id="jobs-long", stall_timeout_s=0.15, extra_data=slow(0.5))
        assert len(long.outputs) == 1
        assert double.count("GET", "/api/jobs/jobs-long") >= 1 and double.count("GET", "/queue") == 0

        cancel = asyncio.Event()
        run = asyncio.create_task(
            client.run(blur_chain(13), prompt_id="jobs-run", cancelled=cancel, extra_data=slow(2))
        )
        await wait_until(lambda: double.running == "jobs-run")
        cancel.set()
        with pytest.raises(ComfyInterrupted):
            await run
        assert double.count("POST", "/api/jobs/jobs-run/cancel") == 1
        assert double.count("POST", "/interrupt") == double.count("POST", "/queue") == 0


# --------------------------------------------------------------------------- configuration and odd servers


@pytest.mark.parametrize(
    "base_url",
    ["localhost:8188", "ftp://comfy:21", "http://", "http://comfy:99999", "http://user:pw@comfy", "http://comfy/?a=1"],
)
def test_malformed_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="invalid ComfyUI base_url") as caught:
        ComfyClient(base_url)
    assert repr(base_url) in str(caught.value)


async def test_auth_header_goes_everywhere_and_is_never_shown(protocol_dir: Path) -> None:
    seen: list[tuple[str, str | None]] = []
    rejection = recorded_body(protocol_dir, "http-post-prompt-error-unknown-node-class.json")

    async def system_stats(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization")))
        return web.json_response(recorded_body(protocol_dir, "http-get-system_stats.json"))

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        seen.append((request.path, request.headers.get("Authorization")))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"}})
        async for _ in ws:
            pass
        return ws

    async def prompt(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization")))
        return web.json_response(rejection, status=400)

    app = web.Application()
    app.router.add_get("/proxy/system_stats", system_stats)
    app.router.add_get("/proxy/ws", websocket)
    app.router.add_post("/proxy/prompt", prompt)
    async for url in serve(app):
        client = ComfyClient(url + "/proxy", auth_header="Authorization: Bearer s3cret", timeout_s=2)
        async with client:
            assert (await client.system_stats()).comfyui_version == "0.3.64"
            with pytest.raises(ComfyRejected, match="NoSuchNode"):
                await client.run(trivial(1), prompt_id="auth-1")
        assert seen == [(f"/proxy/{p}", "Bearer s3cret") for p in ("system_stats", "ws", "prompt")]
        assert "s3cret" not in repr(client)
    with pytest.raises(ValueError, match="auth_header"):
        ComfyClient("http://comfy", auth_header="Bearer s3cret")


async def test_server_without_websocket_is_followed_by_polling(protocol_dir: Path) -> None:
    (recorded_id, entry), *_ = recorded_body(protocol_dir, "http-get-history-success-trivial.json").items()
    polls = 0

    async def prompt(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt_id": body["prompt_id"], "number": 1, "node_errors": {}})

    async def history(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: entry} if polls >= 3 else {})

    app = web.Application()
    app.router.add_post("/prompt", prompt)
    app.router.add_get("/history/{prompt_id}", history)
    async for url in serve(app):  # GET /ws answers 404: the handshake fails, polling follows the prompt
        async with ComfyClient(url, timeout_s=2) as client:
            result = await client.run(trivial(1), prompt_id="poll-1")
    assert result == RunResult("poll-1", [OutputRef("2", "trivial_00001_.png", "proto", "output", "images")], [])
    assert polls == 3 and recorded_id != "poll-1"


async def test_server_that_is_not_comfyui_is_unavailable() -> None:
    async def text(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def other_json(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/system_stats", text)
    app.router.add_get("/json/system_stats", other_json)
    async for url in serve(app):
        async with ComfyClient(url, timeout_s=2) as client:
            with pytest.raises(ComfyUnavailable, match=f"{url} is not a ComfyUI server: GET /system_stats: .*not JSON"):
                await client.system_stats()
            with pytest.raises(ComfyUnavailable, match="is not a ComfyUI server: GET /queue: it answered HTTP 404"):
                await client.queue()
        async with ComfyClient(url + "/json", timeout_s=2) as client:
            with pytest.raises(ComfyUnavailable, match=r"not a ComfyUI server.*'system' and 'devices'"):
                await client.system_stats()


async def test_unreachable_server_is_unavailable(make_double: DoubleFactory) -> None:
    double = await make_double()
    await double.go_down()
    async with ComfyClient(double.url, timeout_s=1) as client:
        with pytest.raises(ComfyUnavailable, match=f"cannot connect to ComfyUI at {double.url}"):
            await client.system_stats()
        with pytest.raises(ComfyUnavailable, match=f"cannot open the WebSocket of ComfyUI at {double.url}"):
            await client.run(trivial(1), prompt_id="nowhere")


async def test_missing_output_is_a_clear_error(client: ComfyClient) -> None:
    ref = OutputRef("9", "gone_00001_.png", "hub", "output", "images")
    with pytest.raises(ComfyOutputMissing, match=r"output hub/gone_00001_\.png \(output\) of node 9 no longer exists"):
        async with client.open_output(ref):
            pass
