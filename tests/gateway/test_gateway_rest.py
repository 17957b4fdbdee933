"""The gateway's REST API under /api/v1 and its OpenAPI document, against real hub processes."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import itertools
import time
import uuid
from functools import partial

import httpx
import msgspec
import pytest
from dispatch_support import events_of
from doubles.png import encode_solid_png, png_size
from gateway_support import GatewayHub
from harness import polled
from nats.aio.msg import Msg
from openapi_spec_validator import validate

from contracts import endpoints
from contracts.errors import HubError
from contracts.messages.jobs import GetJob
from contracts.messages.keys import CreateApiKey
from contracts.messages.render_types import RenderType, SaveRenderType
from contracts.messages.stats import (
    ExportLog,
    FigureRow,
    GenerationRecord,
    GetGeneration,
    QueryFigures,
    QueryLog,
)
from contracts.runtime.bus import call

pytestmark = pytest.mark.slow


async def test_openapi_document_is_valid_and_public(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        response = await http.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    paths = document["paths"]
    for path in (
        "/api/v1/generations",
        "/api/v1/generations/{job_id}",
        "/api/v1/generations/{job_id}/events",
        "/api/v1/render-types",
        "/api/v1/styles",
        "/api/v1/prompt-preview",
    ):
        assert path in paths, sorted(paths)
    assert not any(p.startswith(("/mcp", "/images", "/healthz")) for p in paths)


async def test_api_needs_a_key(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        response = await http.get("/api/v1/render-types")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="genimage-hub", error="invalid_token", error_description="invalid API key: none was sent'
    )
    assert response.json()["error"]["code"] == "unauthorized"


async def test_catalog_and_preview(api: httpx.AsyncClient) -> None:
    render_types = (await api.get("/api/v1/render-types")).json()
    assert "sdxl" in [r["name"] for r in render_types["render_types"]]
    styles = (await api.get("/api/v1/styles")).json()["styles"]
    assert styles
    preview = await api.post("/api/v1/prompt-preview", json={"prompt": "a fox", "styles": [styles[0]["name"]]})
    assert preview.status_code == 200 and "a fox" in preview.json()["positive"]
    unknown = await api.post("/api/v1/prompt-preview", json={"prompt": "a fox", "styles": ["no-such-style"]})
    assert unknown.status_code in (400, 404)
    error = unknown.json()["error"]
    assert error["code"] in ("invalid_request", "not_found") and "no-such-style" in error["message"]


async def test_generation_lifecycle_with_events(gw: GatewayHub, api: httpx.AsyncClient) -> None:
    submitted = await api.post("/api/v1/generations", json={"prompt": "a harbour at night", "seed": 7, "steps": 4})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    assert submitted.headers["location"] == f"/api/v1/generations/{job_id}"

    kinds: list[str] = []
    async with api.stream("GET", f"/api/v1/generations/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                kinds.append(line.split(":", 1)[1].strip())
    assert kinds[0] == "accepted" and kinds[-1] == "completed" and "progress" in kinds

    result = (await api.get(f"/api/v1/generations/{job_id}")).json()
    assert result["status"] == "completed" and result["seed"] == 7 and result["images"]
    assert result["images"][0]["url"] == f"{gw.base_url}/images/{result['images'][0]['output_id']}"
    view = await call(gw.nc, endpoints.Dispatch.JOBS_GET, GetJob(job_id=job_id))
    assert view.api_key_id == gw.key.key.key_id

    image = await api.get(result["images"][0]["url"])
    assert image.status_code == 200 and len(image.content) == result["images"][0]["size"]


async def test_the_event_stream_checks_its_key_without_asking_the_dispatcher(
    gw: GatewayHub, api: httpx.AsyncClient
) -> None:
    submitted = await api.post("/api/v1/generations", json={"prompt": "a quiet pier", "steps": 2})
    job_id = submitted.json()["job_id"]
    views: list[bytes] = []

    async def heard(msg: Msg) -> None:
        views.append(msg.data)

    # A plain subscription hears every view asked of the dispatchers (they answer in a queue group).
    listening = await gw.nc.subscribe(endpoints.Dispatch.JOBS_GET.subject, cb=heard)
    await gw.nc.flush()
    try:
        async with api.stream("GET", f"/api/v1/generations/{job_id}/events") as stream:
            assert stream.status_code == 200
            kinds = [line.split(":", 1)[1].strip() async for line in stream.aiter_lines() if line.startswith("event:")]
        assert kinds[0] == "accepted" and kinds[-1] == "completed", kinds
        await gw.nc.flush()
        # The key that made the job came from its stored `accepted` event, not from the job's view.
        assert not [view for view in views if job_id.encode() in view], views
    finally:
        await listening.unsubscribe()
    for wildcard in ("*", ">", "%3E"):  # never a pattern over every job's events: the not-found of an unknown id
        refused = await api.get(f"/api/v1/generations/{wildcard}/events")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found", refused.text


async def test_errors_are_json_with_the_right_status(gw: GatewayHub, api: httpx.AsyncClient) -> None:
    missing = await api.get("/api/v1/generations/no-such-job")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    bad = await api.post("/api/v1/generations", json={"prompt": "x", "width": "wide"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_request" and "width" in str(bad.json()["error"])

    sneaky = await api.post("/api/v1/generations", json={"prompt": "x", "api_key_id": "someone-else"})
    assert sneaky.status_code == 400

    unknown_style = await api.post("/api/v1/generations", json={"prompt": "x", "styles": ["no-such-style"]})
    assert unknown_style.status_code in (400, 404)
    assert unknown_style.json()["error"]["details"], unknown_style.json()


async def test_delete_cancels_a_running_generation(gw: GatewayHub, api: httpx.AsyncClient) -> None:
    gw.comfy.work_seconds = 20.0
    try:
        submitted = await api.post("/api/v1/generations", json={"prompt": "a long exposure", "steps": 20})
        job_id = submitted.json()["job_id"]
        deadline = time.monotonic() + 10
        while (await api.get(f"/api/v1/generations/{job_id}")).json()["status"] not in ("running", "queued"):
            assert time.monotonic() < deadline
        cancelled = await api.delete(f"/api/v1/generations/{job_id}")
        # A queued job is cancelled at once; a running one is `cancelling` until ComfyUI stops it.
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] in ("cancelling", "cancelled"), cancelled.text
        while (view := (await api.get(f"/api/v1/generations/{job_id}")).json())["status"] == "cancelling":
            assert time.monotonic() < deadline + 10
            await asyncio.sleep(0.05)
        assert view["status"] == "cancelled" and view["error"] == "cancelled by the caller", view
    finally:
        gw.comfy.work_seconds = 0.2
    assert msgspec.json.decode(cancelled.content)["job_id"] == job_id


async def wait_done(api: httpx.AsyncClient, job_id: str, timeout_s: float = 30) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while not (view := (await api.get(f"/api/v1/generations/{job_id}")).json())["done"]:
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)
    return view


async def test_every_image_reports_the_size_read_from_its_file(api: httpx.AsyncClient) -> None:
    submitted = await api.post(
        "/api/v1/generations", json={"prompt": "a narrow tower", "width": 320, "height": 192, "count": 2}
    )
    assert submitted.status_code == 202, submitted.text
    result = await wait_done(api, submitted.json()["job_id"])
    assert result["status"] == "completed" and len(result["images"]) == 2, result
    for image in result["images"]:
        assert (image["width"], image["height"]) == (320, 192), image
        data = (await api.get(image["url"])).content
        assert png_size(data) == (320, 192)


def png_of(width: int, height: int) -> str:
    return base64.b64encode(encode_solid_png(width, height, (30, 60, 90))).decode()


async def test_an_upscale_needs_no_prompt_and_a_blank_prompt_elsewhere_names_the_field(api: httpx.AsyncClient) -> None:
    document = (await api.get("/api/v1/openapi.json")).json()
    (schema,) = [s for name, s in document["components"]["schemas"].items() if name.endswith("NewGeneration")]
    assert "prompt" not in schema.get("required", []) and "omit it" in schema["properties"]["prompt"]["description"]
    image = {"base64": png_of(32, 24)}
    upscale = await api.post("/api/v1/generations", json={"render_type": "upscale", "input_image": image})
    assert upscale.status_code == 202, upscale.text
    done = await wait_done(api, upscale.json()["job_id"])
    assert done["status"] == "completed" and done["images"] and done["prompt"] == "", done
    blank = await api.post("/api/v1/generations", json={"render_type": "sdxl"})
    assert blank.status_code == 400 and blank.json()["error"]["field"] == "prompt", blank.text


async def test_a_node_only_generation_streams_progress_from_the_start(gw: GatewayHub, api: httpx.AsyncClient) -> None:
    gw.comfy.work_seconds = 3.0  # upscale: image nodes only, none with sampler steps
    try:
        submitted = await api.post(
            "/api/v1/generations", json={"render_type": "upscale", "input_image": {"base64": png_of(32, 24)}}
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        events: list[tuple[str, dict]] = []
        async with api.stream("GET", f"/api/v1/generations/{job_id}/events") as stream:
            kind = ""
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((kind, msgspec.json.decode(line.split(":", 1)[1])))
    finally:
        gw.comfy.work_seconds = 0.2
    kinds = [kind for kind, _ in events]
    started, completed = events[kinds.index("started")][1], events[kinds.index("completed")][1]
    progress = [data for kind, data in events if kind == "progress"]
    assert progress and progress[0]["at"] - started["at"] < 0.5, progress
    stamps = [p["at"] for p in progress] + [completed["at"]]
    assert max(later - earlier for earlier, later in itertools.pairwise(stamps)) < 1.35, stamps
    assert any(0 < p["percent"] < 100 for p in progress) and progress[-1]["nodes_total"] > 1
    done = (await api.get(f"/api/v1/generations/{job_id}")).json()
    assert done["status"] == "completed" and done["progress"]["percent"] == 100, done["progress"]


# The recordings' ws_save workflow: SaveImageWebsocket sends its images as binary WebSocket frames only.
WS_SAVE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": 0x2288CC}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
}


async def figures_of(gw: GatewayHub, render_type: str, jobs: int) -> FigureRow:
    """The stats service's figures of one render type, once it has recorded `jobs` finished jobs."""
    if "stats" not in gw.hub.processes:
        await gw.hub.start("stats").wait_healthy(gw.nc)
    ask = partial(call, gw.nc, endpoints.Stats.FIGURES, QueryFigures(group_by="render_type", render_type=render_type))
    figures = await polled(
        ask, lambda f: f.total is not None and f.total.completed + f.total.failed >= jobs, within_s=20
    )
    return figures.total


async def test_images_sent_over_the_websocket_are_stored_and_a_job_that_loses_them_fails(
    gw: GatewayHub, api: httpx.AsyncClient
) -> None:
    render_type = RenderType(name="ws-save-rest", workflow=WS_SAVE)
    await call(gw.nc, endpoints.Registry.SAVE, SaveRenderType(render_type=render_type))
    sent_before = len(gw.comfy.websocket_images)
    submitted = await api.post("/api/v1/generations", json={"render_type": "ws-save-rest"})
    assert submitted.status_code == 202, submitted.text
    done = await wait_done(api, submitted.json()["job_id"])
    assert done["status"] == "completed" and len(done["images"]) == 3, done
    sent = gw.comfy.websocket_images[sent_before:]
    fetched = [(await api.get(image["url"])).content for image in done["images"]]
    assert fetched == sent  # byte for byte what SaveImageWebsocket sent
    assert {(i["content_type"], i["width"], i["height"]) for i in done["images"]} == {("image/png", 64, 48)}

    # The WebSocket drops while the job runs: ComfyUI's history has no outputs for it, so nothing is left.
    gw.comfy.work_seconds = 2.0
    try:
        submitted = await api.post("/api/v1/generations", json={"render_type": "ws-save-rest"})
        job_id = submitted.json()["job_id"]
        deadline = time.monotonic() + 15
        while gw.comfy.running is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await gw.comfy.drop_websockets() >= 1
        lost = await wait_done(api, job_id)
    finally:
        gw.comfy.work_seconds = 0.2
    assert lost["status"] == "failed" and lost["images"] == [], lost
    assert "no output the hub can store" in lost["error"] and "2 (SaveImageWebsocket)" in lost["error"], lost
    figures = await figures_of(gw, "ws-save-rest", jobs=2)
    assert (figures.completed, figures.failed, figures.images) == (1, 1, 3), figures


async def stats_record(gw: GatewayHub, job_id: str) -> GenerationRecord:
    deadline = time.monotonic() + 20
    while True:
        try:
            record = await call(gw.nc, endpoints.Stats.LOG_GET, GetGeneration(job_id=job_id))
            if record.status == "completed" and record.render_type:
                return record
        except HubError:
            pass
        assert time.monotonic() < deadline, job_id
        await asyncio.sleep(0.1)


async def test_the_seed_is_the_same_in_the_api_the_events_and_the_csv_export(
    gw: GatewayHub, api: httpx.AsyncClient
) -> None:
    if "stats" not in gw.hub.processes:
        await gw.hub.start("stats").wait_healthy(gw.nc)
    drawn = await api.post("/api/v1/generations", json={"prompt": "a seeded fox"})
    image = {"base64": png_of(16, 16)}
    upscale = await api.post("/api/v1/generations", json={"render_type": "upscale", "input_image": image})
    seen: dict[str, int | None] = {}
    for submitted in (drawn, upscale):
        job_id = submitted.json()["job_id"]
        view = await wait_done(api, job_id)
        accepted = (await events_of(gw.nc, job_id))[0]
        record = await stats_record(gw, job_id)
        query = QueryLog(render_type=view["render_type"])
        part = await call(gw.nc, endpoints.Stats.EXPORT, ExportLog(format="csv", query=query))
        cells = {row["job_id"]: row["seed"] for row in csv.DictReader(io.StringIO(part.content))}
        assert submitted.json()["seed"] == view["seed"] == accepted.seed == record.seed, (view, accepted, record)
        assert cells[job_id] == ("" if view["seed"] is None else str(view["seed"]))
        seen[view["render_type"]] = view["seed"]
    assert isinstance(seen["sdxl"], int) and seen["upscale"] is None  # null only where there is no seed slot


async def test_a_retry_with_the_same_idempotency_key_gets_the_first_job(gw: GatewayHub, api: httpx.AsyncClient) -> None:
    """A client whose answer was cut off sends its POST again: with an `Idempotency-Key` it gets the job made the
    first time (202, same job id), also when the repeats race each other; no second job runs."""
    body = {"prompt": "a lighthouse in fog", "seed": 11, "steps": 4}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await api.post("/api/v1/generations", json=body, headers=key)
    assert first.status_code == 202, first.text
    job_id = first.json()["job_id"]
    repeats = await asyncio.gather(*(api.post("/api/v1/generations", json=body, headers=key) for _ in range(4)))
    assert [(r.status_code, r.json()["job_id"]) for r in repeats] == [(202, job_id)] * 4, [r.text for r in repeats]
    assert repeats[0].headers["location"] == f"/api/v1/generations/{job_id}"

    racing = {"Idempotency-Key": str(uuid.uuid4())}
    raced = await asyncio.gather(*(api.post("/api/v1/generations", json=body, headers=racing) for _ in range(5)))
    assert {r.status_code for r in raced} == {202}, [r.text for r in raced]
    assert len({r.json()["job_id"] for r in raced}) == 1, [r.text for r in raced]

    for made in (job_id, raced[0].json()["job_id"]):
        deadline = time.monotonic() + 30
        while (await api.get(f"/api/v1/generations/{made}")).json()["status"] != "completed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert [p for p in gw.comfy.history if p.startswith(f"{made}-")] == [f"{made}-1"], gw.comfy.history
    events = await events_of(gw.nc, job_id)
    assert [type(e).__struct_config__.tag for e in events].count("accepted") == 1


async def test_an_idempotency_key_is_refused_for_another_request_and_kept_per_api_key(
    gw: GatewayHub, api: httpx.AsyncClient
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    refused = await api.post("/api/v1/generations", json={"prompt": " ", "steps": 4}, headers=key)
    assert refused.status_code == 400, refused.text  # nothing made: the key stays free for the corrected request
    first = await api.post("/api/v1/generations", json={"prompt": "a red kite", "steps": 4}, headers=key)
    assert first.status_code == 202, first.text

    changed = await api.post("/api/v1/generations", json={"prompt": "a blue kite", "steps": 4}, headers=key)
    assert changed.status_code == 409, changed.text
    error = changed.json()["error"]
    assert error["code"] == "conflict" and error["field"] == "Idempotency-Key", error
    assert first.json()["job_id"] in error["message"] and "new Idempotency-Key" in error["message"], error

    bad = await api.post("/api/v1/generations", json={"prompt": "a kite"}, headers={"Idempotency-Key": "retry-1"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "Idempotency-Key", bad.text
    assert "must be a UUID" in bad.json()["error"]["message"], bad.text

    other = await call(gw.nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name=f"other-{time.time_ns()}"))
    headers = {"Authorization": f"Bearer {other.secret}", **key}
    theirs = await api.post("/api/v1/generations", json={"prompt": "a blue kite", "steps": 4}, headers=headers)
    assert theirs.status_code == 202 and theirs.json()["job_id"] != first.json()["job_id"], theirs.text
