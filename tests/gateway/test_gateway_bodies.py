"""Hostile bodies and images at the gateway's doors (REST and /mcp), against real hub processes: every malformed
body is a 4xx with a JSON error, and a broken input image is refused before the job is accepted, naming its field."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from doubles.png import encode_solid_png
from gateway_support import GatewayHub
from PIL import Image

from contracts.runtime.storage import ObjectStoreOutputs

pytestmark = pytest.mark.slow

ACCEPT = {"Accept": "application/json, text/event-stream"}
DEEP_JSON = b"[" * 1000 + b"]" * 1000  # deeper than msgspec decodes: it raised RecursionError (a 500)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _img2img(image: dict[str, str]) -> dict[str, object]:
    return {"prompt": "repaint it", "render_type": "img2img", "input_image": image}


def _error(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["error"]


async def test_json_nested_too_deep_is_a_400_on_rest_and_mcp(api: httpx.AsyncClient) -> None:
    for path in ("/api/v1/generations", "/api/v1/prompt-preview"):
        answer = await api.post(path, content=DEEP_JSON, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (path, answer.status_code, answer.text)
        assert _error(answer)["code"] == "invalid_request" and "nests too deeply" in str(_error(answer)["message"])

    mcp = await api.post("/mcp", content=DEEP_JSON, headers={**ACCEPT, "Content-Type": "application/json"})
    assert mcp.status_code == 400, mcp.text
    assert mcp.json()["error"]["code"] == -32700


async def test_rest_bodies_must_be_sent_as_json(api: httpx.AsyncClient) -> None:
    body = b'{"prompt": "a fox"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = await api.post("/api/v1/prompt-preview", content=body, headers=headers)
        assert answer.status_code == 415, (content_type, answer.status_code, answer.text)
        error = _error(answer)
        assert error["field"] == "Content-Type" and "application/json" in str(error["message"])
    charset = await api.post(
        "/api/v1/prompt-preview", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert charset.status_code == 200, charset.text


async def test_an_unknown_api_path_answers_json(api: httpx.AsyncClient) -> None:
    for path in ("/api/v1/nope", "/api/v1/generations/x/y/z", "/api/v2/anything"):
        answer = await api.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert _error(answer)["code"] == "not_found", path
    document = await api.get("/api/v1/openapi.json")
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.")


async def test_a_truncated_or_fake_image_is_refused_at_the_door_naming_the_field(api: httpx.AsyncClient) -> None:
    picture = encode_solid_png(64, 48, (10, 120, 200))
    refused = {
        "header only": picture[:33],  # signature and IHDR: it was accepted with 202
        "cut short": picture[: len(picture) - 20],
        "not an image": b"plain text, not pixels",
        "magic only": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    }
    for what, data in refused.items():
        answer = await api.post("/api/v1/generations", json=_img2img({"base64": _b64(data)}))
        assert answer.status_code == 400, (what, answer.status_code, answer.text)
        error = _error(answer)
        assert error["field"] == "input_image.base64", (what, error)
        assert "PNG, JPEG, WebP or GIF" in str(error["message"]), (what, error)

    accepted = await api.post("/api/v1/generations", json=_img2img({"base64": _b64(picture)}))
    assert accepted.status_code == 202, accepted.text


async def test_a_broken_stored_image_is_refused_by_the_dispatcher_naming_stored_id(
    gw: GatewayHub, api: httpx.AsyncClient
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    store = ObjectStoreOutputs(gw.nc.jetstream())
    broken = await store.save(
        io.BytesIO(jpeg[: len(jpeg) // 2]), filename="half.jpg", content_type="image/jpeg", job_id="t"
    )
    whole = await store.save(io.BytesIO(jpeg), filename="whole.jpg", content_type="image/jpeg", job_id="t")

    answer = await api.post("/api/v1/generations", json=_img2img({"stored_id": broken.output_id}))
    assert answer.status_code == 400, answer.text
    assert _error(answer)["field"] == "input_image.stored_id"
    accepted = await api.post("/api/v1/generations", json=_img2img({"stored_id": whole.output_id}))
    assert accepted.status_code == 202, accepted.text


async def test_a_decompression_bomb_is_refused(api: httpx.AsyncClient) -> None:
    """A small file that claims more pixels than Pillow's limit is refused before its pixels are decoded."""
    bomb = encode_solid_png(12_000, 8_000, (0, 0, 0))  # 96 M pixels > Image.MAX_IMAGE_PIXELS (89 M), ~100 kB
    answer = await api.post("/api/v1/generations", json=_img2img({"base64": _b64(bomb)}))
    assert answer.status_code == 400, answer.text
    error = _error(answer)
    assert error["field"] == "input_image.base64" and "pixels" in str(error["message"]), error
