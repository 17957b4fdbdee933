"""Traces: one generation is one trace across gateway, dispatch, registry, prompt, the ComfyUI call, the stored
outputs, its events and its webhook, its context carried in NATS headers. The services run as processes with
OTEL_EXPORTER_OTLP_ENDPOINT pointing at an OTLP/HTTP receiver in this process, which keeps the spans in memory;
and with tracing off nothing of the SDK is loaded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gateway_support import GatewayHub, gateway_hub
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from webhook_support import Receiver, receiving

from contracts.runtime import tracing
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


def spans_of(collector: Receiver) -> list[Span]:
    """Every span the services exported so far (OTLP/HTTP protobuf bodies)."""
    found: list[Span] = []
    for got in collector.got:
        export = ExportTraceServiceRequest.FromString(got.body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    found.append(
                        Span(
                            service=resource["service.name"],
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=attributes,
                        )
                    )
    return found


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
async def collector() -> AsyncIterator[Receiver]:
    async with receiving([]) as receiver:
        yield receiver


@pytest.fixture(scope="module")
async def traced(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, collector: Receiver
) -> AsyncIterator[GatewayHub]:
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans reach the receiver soon after they end
    }
    async with gateway_hub(
        nats_server.url,
        tmp_path_factory.mktemp("tracing"),
        services_env=otel,
        HUB_INPUT_URL_ALLOW="127.0.0.1",
        **otel,
    ) as hub:
        yield hub


async def wait_for_spans(collector: Receiver, job_id: str, names: set[str], timeout_s: float = 30) -> list[Span]:
    """The spans of the job's trace, once every name of `names` is among them."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = spans_of(collector)
        roots = {s.trace_id for s in spans if s.attributes.get("job_id") == job_id}
        trace = [s for s in spans if s.trace_id in roots]
        if names <= {s.name for s in trace}:
            return trace
        assert time.monotonic() < deadline, (sorted(names - {s.name for s in trace}), spans)
        await asyncio.sleep(0.2)


async def test_one_generation_is_one_trace_across_the_services(traced: GatewayHub, collector: Receiver) -> None:
    async with (
        receiving([]) as hook,
        httpx.AsyncClient(base_url=traced.base_url, headers=traced.auth, timeout=30) as api,
    ):
        asked = {"prompt": "a lantern", "callback_url": f"http://127.0.0.1:{hook.port}/done"}
        submitted = await api.post("/api/v1/generations", json=asked)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await hook.wait_for(1, timeout_s=60)  # the webhook: the job ended and its final state was delivered

    trace = await wait_for_spans(
        collector,
        job_id,
        {
            "POST /api/v1/generations",
            "hub.dispatch.jobs.submit",
            "hub.registry.resolve",
            "hub.prompt.build",
            "job.run",
            "comfyui.run",
            "outputs.store",
            "event.publish",
            "webhook.deliver",
        },
    )
    assert len({s.trace_id for s in trace}) == 1, trace  # one trace, whatever service made the span
    by_id = {s.span_id: s for s in trace}
    (root,) = [s for s in trace if not s.parent_id]
    assert (root.name, root.service) == ("POST /api/v1/generations", "hub-gateway")
    for span in trace:  # every span hangs from the request that submitted the job
        chain = span
        while chain.parent_id:
            assert chain.parent_id in by_id, (span, "its parent was not exported")
            chain = by_id[chain.parent_id]
        assert chain is root

    def one(name: str, service: str) -> Span:
        found = [s for s in trace if s.name == name and s.service == service]
        assert len(found) == 1, (name, service, found)
        return found[0]

    one("hub.registry.resolve", "hub-registry")
    one("hub.prompt.build", "hub-prompt")
    run = one("job.run", "hub-dispatch")
    assert run.attributes["instance"] == "gw-comfy" and run.attributes["attempt"] == 1, run
    assert run.attributes["render_type"] == submitted.json()["render_type"]
    comfy = one("comfyui.run", "hub-dispatch")
    assert comfy.parent_id == run.span_id and comfy.attributes["prompt_id"] == f"{job_id}-1"
    assert one("outputs.store", "hub-dispatch").parent_id == run.span_id
    published = {s.attributes["event"] for s in trace if s.name == "event.publish"}
    assert {"accepted", "queued", "started", "completed"} <= published, published
    assert one("webhook.deliver", "hub-gateway").attributes["job_id"] == job_id

    # The dispatcher's log lines about the job carry its id and the trace's.
    lines = [json.loads(line) for line in traced.hub.processes["dispatch"].log().splitlines() if line.startswith("{")]
    about_job = [line for line in lines if line.get("event") in ("job started", "job completed")]
    assert len(about_job) == 2, lines[-20:]
    for line in about_job:
        assert (line["job_id"], line["trace_id"]) == (job_id, root.trace_id), line


def test_tracing_off_loads_nothing_and_leaves_headers_alone() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT the hot path's hooks do nothing and the SDK is never imported."""
    assert not tracing.enabled()
    headers = {"Nats-Msg-Id": "x"}
    assert tracing.inject(headers) is headers and tracing.inject() is None
    assert tracing.span("job.run", job_id="x") is tracing.span("other")  # the one shared no-op
    probe = (
        "import sys\n"
        "from contracts.runtime import tracing\n"
        "from contracts.runtime.config import load_settings\n"
        "from contracts.runtime.logs import configure_logging\n"
        "import dispatch_service.scheduler, gateway.http_metrics\n"
        "settings = load_settings('dispatch', {})\n"
        "assert not tracing.configure(settings)\n"
        "configure_logging(settings)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded
