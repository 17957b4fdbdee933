"""The hub's Prometheus figures: the gateway's /metrics gathers every replica of every service over NATS; the
figures move with real generations through the real services and the ComfyUI double."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import nats
import pytest
from dispatch_support import retention_removes_images_of, wait_final
from doubles.ollama import OllamaDouble
from gateway_support import GatewayHub, gateway_fixture
from harness import ServiceProcess, hub_env
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from metrics_support import Samples, parse_samples, scrape, value
from nats.js.errors import KeyNotFoundError
from prometheus_client.parser import text_string_to_metric_families

from contracts import endpoints
from contracts.messages.styles import LlmSettings, SaveLlmSettings
from contracts.runtime.bus import call
from contracts.runtime.config import load_settings
from contracts.runtime.metrics import gather, merge
from contracts.runtime.service import ServiceRuntime
from dispatch_service.affinity import MODELS_BUCKET
from dispatch_service.leases import instance_key
from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "metrics" / "genimage-hub.json"
README = Path(__file__).resolve().parents[2] / "README.md"


gw = gateway_fixture("metrics", also=("stats",))


def replicas_of(samples: Samples, service: str) -> float:
    return value(samples, "genimage_scrape_replica_up", service=service)


async def test_metrics_need_no_key_and_gather_every_service(gw: GatewayHub) -> None:
    text, samples = await scrape(gw.base_url)
    for service in ("gateway", "registry", "prompt", "dispatch", "stats"):
        assert replicas_of(samples, service) == 1, service
        assert (f"genimage_{service}_nats_reconnects_total", frozenset()) in samples, service
    # One HELP/TYPE per family: valid exposition although every replica sent its own.
    assert text.count("# TYPE genimage_dispatch_nats_requests_total counter") == 1


async def test_gateway_routes_and_mcp_methods_are_counted_and_timed(gw: GatewayHub) -> None:
    _, before = await scrape(gw.base_url)
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        submitted = await api.post("/api/v1/generations", json={"prompt": "a lighthouse", "steps": 2})
        assert submitted.status_code == 202, submitted.text
        missing = await api.get("/api/v1/generations/no-such-job")
        assert missing.status_code == 404
    await wait_final(gw.nc, submitted.json()["job_id"])
    async with (
        httpx.AsyncClient(headers=gw.auth, timeout=30) as http,
        streamable_http_client(f"{gw.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await session.list_tools()
    _, after = await scrape(gw.base_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/api/v1/generations"
    assert moved("genimage_gateway_http_requests_total", route=route, method="POST", status="202") == 1
    one = "/api/v1/generations/{job_id}"
    routes = sorted(dict(labels).get("route", "") for name, labels in after if name.endswith("http_requests_total"))
    assert moved("genimage_gateway_http_requests_total", route=one, method="GET", status="404") == 1, routes
    assert moved("genimage_gateway_http_request_duration_seconds_count", route=route) == 1
    assert moved("genimage_gateway_mcp_requests_total", method="initialize", status="200") == 1
    assert moved("genimage_gateway_mcp_requests_total", method="tools/list", status="200") == 1
    assert moved("genimage_gateway_mcp_request_duration_seconds_count", method="tools/list") == 1
    assert moved("genimage_dispatch_nats_requests_total", endpoint="jobs_submit") == 1
    # The scrape itself is a route like the others.
    assert moved("genimage_gateway_http_requests_total", route="/metrics", method="GET", status="200") >= 1


@contextlib.asynccontextmanager
async def one_more(gw: GatewayHub, name: str, label: str, **env: str) -> AsyncIterator[ServiceProcess]:
    """Another `name` process beside the hub's (its log named with `label`), healthy on entry, stopped on exit."""
    process = ServiceProcess(
        name=name,
        env=hub_env(gw.hub.nats_url, gw.hub.data_dir, **env),
        log_path=gw.hub.data_dir / f"{name}-{label}-{int(time.time() * 1000)}.log",
    )
    process.start()
    try:
        await process.wait_healthy(gw.nc)
        yield process
    finally:
        await process.stop()


async def test_every_replica_answers_and_families_are_merged(gw: GatewayHub) -> None:
    async with one_more(gw, "dispatch", "second", HUB_DISPATCH_HEALTH_INTERVAL_S="0.2"):
        text, samples = await scrape(gw.base_url)
        assert replicas_of(samples, "dispatch") == 2
        assert text.count("# TYPE genimage_dispatch_nats_reconnects_total counter") == 1
        replicas = {
            s.labels["replica"]
            for f in text_string_to_metric_families(text)
            if f.name == "genimage_dispatch_nats_reconnects"
            for s in f.samples
        }
        assert len(replicas) == 2


async def test_metrics_are_refused_to_clients_outside_the_allowlist(gw: GatewayHub) -> None:
    async with one_more(gw, "gateway", "allow", HUB_METRICS_ALLOW="10.0.0.0/8") as gateway:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.env['HUB_GATEWAY_PORT']}") as http:
            deadline = time.monotonic() + 15
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            refused = await http.get("/metrics")
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["field"] == "HUB_METRICS_ALLOW" and "127.0.0.1" in error["message"]


async def scrape_until(base_url: str, moved: Callable[[Samples], bool], timeout_s: float = 15) -> Samples:
    """Scrape until `moved` holds (the stats service records events a moment after the job ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, samples = await scrape(base_url)
        if moved(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


async def test_generations_are_counted_by_status_render_type_and_key_with_their_times(gw: GatewayHub) -> None:
    _, before = await scrape(gw.base_url)
    done = {"name": "genimage_stats_generations_total", "status": "completed", "render_type": "sdxl", "key": "tests"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        for prompt in ("a red kite", "a blue kite"):
            submitted = await api.post("/api/v1/generations", json={"prompt": prompt, "steps": 2})
            assert submitted.status_code == 202, submitted.text
            assert (await wait_final(gw.nc, submitted.json()["job_id"])).status == "completed"
    after = await scrape_until(gw.base_url, lambda s: value(s, **done) - value(before, **done) >= 2)
    assert value(after, **done) - value(before, **done) == 2
    for name in ("genimage_stats_queue_wait_seconds_count", "genimage_stats_run_seconds_count"):
        labels = {"render_type": "sdxl", "instance": "gw-comfy"}
        assert value(after, name, **labels) - value(before, name, **labels) == 2, name
    # The run time of the double (0.2 s of work) lands in the histogram's sum.
    run_sum = "genimage_stats_run_seconds_sum"
    assert (
        value(after, run_sum, render_type="sdxl", instance="gw-comfy")
        - value(before, run_sum, render_type="sdxl", instance="gw-comfy")
        >= 0.4
    )


async def test_retention_runs_and_the_bytes_they_remove_are_counted(gw: GatewayHub) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        submitted = await api.post("/api/v1/generations", json={"prompt": "an old photo", "steps": 2})
    job = await wait_final(gw.nc, submitted.json()["job_id"])
    _, before = await scrape(gw.base_url)
    report = await retention_removes_images_of(gw.hub, job.job_id)
    assert report.images_removed >= 1 and report.bytes_freed > 0
    _, after = await scrape(gw.base_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("genimage_stats_retention_runs_total", trigger="request", outcome="ok") == 1
    assert moved("genimage_stats_retention_bytes_removed_total") == report.bytes_freed
    assert moved("genimage_stats_retention_images_removed_total") == report.images_removed


async def forget_loaded_models(gw: GatewayHub, name: str) -> None:
    """What the instance holds is shared in a KV bucket of the session's NATS, where earlier tests' jobs on the same
    instance name left it: forget it, as the dispatcher does for an instance seen down and up again."""
    bucket = await gw.nc.jetstream().key_value(MODELS_BUCKET)
    with contextlib.suppress(KeyNotFoundError):
        await bucket.delete(instance_key(name))
    await asyncio.sleep(0.2)  # the dispatcher follows the bucket (a watch): let it see the delete


async def test_queue_depth_busy_slots_and_the_oldest_wait_follow_the_jobs(gw: GatewayHub) -> None:
    instance = {"instance": "gw-comfy"}
    await forget_loaded_models(gw, "gw-comfy")
    gw.comfy.work_seconds = 20.0  # long runs: two fill the instance's two slots, the third waits
    job_ids: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
            for n in range(3):
                submitted = await api.post("/api/v1/generations", json={"prompt": f"slow {n}", "steps": 20})
                assert submitted.status_code == 202, submitted.text
                job_ids.append(submitted.json()["job_id"])

            def full(s: Samples) -> bool:
                return (
                    value(s, "genimage_dispatch_instance_busy_slots", **instance) == 2
                    and value(s, "genimage_dispatch_queue_depth") == 1
                )

            during = await scrape_until(gw.base_url, full)
            assert full(during), {k: v for k, v in during.items() if "dispatch_instance" in k[0] or "queue" in k[0]}
            assert value(during, "genimage_dispatch_instance_up", **instance) == 1
            assert value(during, "genimage_dispatch_instance_slots", **instance) == 2
            assert value(during, "genimage_dispatch_queue_depth_by_render_type", render_type="sdxl") == 1
            assert 0 < value(during, "genimage_dispatch_queue_oldest_wait_seconds") < 30
            for job_id in job_ids:
                assert (await api.delete(f"/api/v1/generations/{job_id}")).status_code == 200
    finally:
        gw.comfy.work_seconds = 0.2
    for job_id in job_ids:
        assert (await wait_final(gw.nc, job_id)).status == "cancelled"
    after = await scrape_until(
        gw.base_url, lambda s: value(s, "genimage_dispatch_instance_busy_slots", **instance) == 0
    )
    assert value(after, "genimage_dispatch_queue_depth") == 0
    assert value(after, "genimage_dispatch_queue_oldest_wait_seconds") == 0
    # The instance's first job loaded its checkpoint: a model switch.
    assert value(after, "genimage_dispatch_instance_model_switches_total", **instance) >= 1
    assert value(after, "genimage_dispatch_instance_model_switch_seconds_total", **instance) > 0  # what it took


async def test_a_failed_attempt_counts_against_its_instance_and_the_generation_as_failed(gw: GatewayHub) -> None:
    failed = {"name": "genimage_stats_generations_total", "status": "failed", "render_type": "sdxl", "key": "tests"}
    attempts = {"name": "genimage_dispatch_instance_failures_total", "instance": "gw-comfy", "kind": "execution_failed"}
    _, before = await scrape(gw.base_url)
    gw.comfy.fail_next_job()
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
        submitted = await api.post("/api/v1/generations", json={"prompt": "a doomed job", "steps": 2})
    assert (await wait_final(gw.nc, submitted.json()["job_id"])).status == "failed"
    after = await scrape_until(gw.base_url, lambda s: value(s, **failed) > value(before, **failed))
    assert value(after, **failed) - value(before, **failed) == 1
    assert value(after, **attempts) - value(before, **attempts) == 1


async def test_llm_enhancements_are_timed_and_fallbacks_counted(gw: GatewayHub) -> None:
    enhancements = "genimage_prompt_llm_enhancements_total"
    _, before = await scrape(gw.base_url)
    async with OllamaDouble(reply="a lighthouse on a cliff at dusk, volumetric light") as ollama:
        ollama.delay_seconds = 0.3
        settings = LlmSettings(base_url=ollama.url, model="llama3.2:3b")
        await call(gw.nc, endpoints.Prompt.LLM_SETTINGS_SAVE, SaveLlmSettings(settings=settings))
        try:
            async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.auth, timeout=30) as api:
                preview = {"prompt": "a lighthouse", "enhance": True}
                rewritten = await api.post("/api/v1/prompt-preview", json=preview)
                assert rewritten.status_code == 200 and rewritten.json()["enhanced"], rewritten.text
                ollama.mode = "error"
                as_typed = await api.post("/api/v1/prompt-preview", json=preview)
                assert as_typed.status_code == 200 and not as_typed.json()["enhanced"], as_typed.text
        finally:
            await call(gw.nc, endpoints.Prompt.LLM_SETTINGS_SAVE, SaveLlmSettings(settings=LlmSettings()))
    _, after = await scrape(gw.base_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(enhancements, outcome="ok") == 1
    assert moved(enhancements, outcome="fallback") == 1
    assert moved("genimage_prompt_llm_enhancement_seconds_count", outcome="ok") == 1
    assert moved("genimage_prompt_llm_enhancement_seconds_sum", outcome="ok") >= 0.3


async def test_the_grafana_dashboard_uses_only_names_the_hub_exposes(gw: GatewayHub) -> None:
    text, _ = await scrape(gw.base_url)
    exposed = set()
    for family in text_string_to_metric_families(text):
        exposed.add(family.name)
        exposed.update(sample.name for sample in family.samples)
    # Histograms and counters exist before their first sample: their suffixed names count too.
    exposed.update(f"{name}{suffix}" for name in list(exposed) for suffix in ("_total", "_bucket", "_sum", "_count"))
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bgenimage_[a-z_]+", target["expr"])
    }
    assert len(used) >= 15
    assert used - exposed == set()


def readme_metric_patterns() -> list[re.Pattern[str]]:
    """The names the README's metrics table (Operating the hub) documents, as patterns: `genimage_<service>_...`
    stands for every service, and `…_tail` in a row for a name of the row's service ending in `_tail`."""
    table = README.read_text().split("| Metric | Labels | What |", 1)[1].split("\n\n", 1)[0]
    patterns = []
    for row in table.splitlines()[2:]:
        names = re.findall(r"`((?:genimage|…)_[a-z_<>]+)`", row.split("|")[1])
        service_prefix = "_".join(names[0].split("_")[:2])  # genimage_<service> or genimage_dispatch
        for name in names:
            if name.startswith("…"):
                name = f"{service_prefix}_(?:[a-z_]+_)?{name.removeprefix('…_')}"
            patterns.append(re.compile(name.replace("<service>", "[a-z]+").removesuffix("_total") + "(?:_total)?"))
    return patterns


async def test_the_readme_names_every_metric_the_hub_exposes(gw: GatewayHub) -> None:
    text, _ = await scrape(gw.base_url)
    patterns = readme_metric_patterns()
    assert len(patterns) >= 25
    exposed = {family.name for family in text_string_to_metric_families(text)}
    undocumented = {name for name in exposed if not any(p.fullmatch(name) for p in patterns)}
    assert undocumented == set(), "add these to the README's metrics table (Operating the hub)"


async def test_a_nats_reconnect_is_counted_by_the_replica_that_made_it(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    env = {"HUB_NATS_URL": server.url, "HUB_DATA_DIR": str(tmp_path), "HUB_LOG_FORMAT": "json"}
    runtime = ServiceRuntime(load_settings("echo", env), version="1.0.0", description="a replica that reconnects")
    watcher = None
    try:
        await runtime.start()
        watcher = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)

        async def reconnects() -> float:
            (reply,) = await gather(watcher)
            assert reply.replica == runtime.instance_id
            return value(parse_samples(merge([reply]).decode()), "genimage_echo_nats_reconnects_total")

        assert await reconnects() == 0
        server.stop()
        server.start()
        deadline = time.monotonic() + 15
        while not (runtime.nc.is_connected and watcher.is_connected and runtime.nc.stats["reconnects"]):
            assert time.monotonic() < deadline, "the replica never reconnected"
            await asyncio.sleep(0.1)
        await runtime.nc.flush()
        assert await reconnects() == 1
    finally:
        if watcher is not None:
            await watcher.close()
        await runtime.stop()
        server.stop()
