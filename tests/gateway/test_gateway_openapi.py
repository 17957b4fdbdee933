"""The OpenAPI document is the truth: a bounded schemathesis run (every check, a fixed seed, a small budget; see
tests/schemathesis.toml) against the real gateway and hub processes finds no disagreement with the server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from gateway_support import GatewayHub, gateway_fixture

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).parents[1] / "schemathesis.toml"
RUN_LIMIT_S = 150


gw = gateway_fixture("gateway-openapi")


async def schemathesis_run(gw: GatewayHub, workdir: Path) -> tuple[int, str]:
    """The exit status and the report of the schemathesis CLI run against the gateway's own document."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file",
        str(CONFIG),
        "run",
        f"{gw.base_url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {gw.key.secret}",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=workdir,  # whatever it writes stays out of the checkout
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_LIMIT_S)
    finally:
        if process.returncode is None:
            process.kill()
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.timeout(RUN_LIMIT_S + 30)
async def test_schemathesis_finds_no_disagreement_with_the_document(gw: GatewayHub, tmp_path: Path) -> None:
    status, report = await schemathesis_run(gw, tmp_path)
    assert status == 0 and "No issues found" in report, report[-6000:]
    assert "7 selected / 7 total" in report, report[:2000]  # every operation was tried


async def test_the_document_states_errors_events_and_refused_fields(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        document = (await http.get("/api/v1/openapi.json")).json()
    paths, schemas = document["paths"], document["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status in ("401", "403", "503"):
                assert operation["responses"][status]["content"]["application/json"]["schema"] == error, (path, method)
    assert set(schemas["ErrorBody"]["properties"]) == {"error"}
    assert schemas["ErrorDetail"]["required"] == ["code", "message"]
    events = paths["/api/v1/generations/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    assert schemas["NewGeneration"]["additionalProperties"] is False
    bound = schemas["ParameterSpec"]["properties"]["minimum"]
    assert "oneOf" not in bound and {"type": "integer"} in bound["anyOf"], bound  # 0 matched int and number twice
    assert schemas["BuildPrompt"]["properties"]["enhance_timeout_s"]["anyOf"][0]["exclusiveMinimum"] == 0


def allowed(response: httpx.Response) -> set[str]:
    return set(response.headers.get("allow", "").split(", "))


async def test_methods_and_bodies_are_answered_as_the_document_says(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth) as api:
        options = await api.options("/api/v1/generations/some-job")
        assert options.status_code == 204 and allowed(options) == {"DELETE", "GET", "OPTIONS"}  # GET was missing
        traced = await api.request("TRACE", "/api/v1/render-types")
        assert traced.status_code == 405 and allowed(traced) == {"GET", "OPTIONS"}, traced.headers  # was missing
        put = await api.put("/api/v1/render-types", content=b"x")
        assert put.status_code == 405, put.text  # was 415, a complaint about a body no handler reads
        lenient = await api.post("/api/v1/generations", json={"prompt": "a fox", "width": "512"})
        assert lenient.status_code == 400, lenient.text  # the string "512" was taken as 512
        assert lenient.json()["error"]["field"] == "width" and "got `str`" in lenient.json()["error"]["message"]
        nested = await api.post("/api/v1/generations", json={"prompt": "x", "input_image": {"url": "u", "x": 1}})
        assert nested.status_code == 400 and nested.json()["error"]["field"] == "input_image.x", nested.text
        flag = await api.post("/api/v1/prompt-preview", json={"prompt": "a fox", "enhance": "true"})
        assert flag.status_code == 400 and flag.json()["error"]["field"] == "enhance", flag.text
