"""`python -m hub_deploy up` (what `./hub start` runs): the whole hub from nothing, supervised, stopped by Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import pytest
from dispatch_support import add_instance
from doubles.comfyui import ComfyUIDouble
from harness import hub_env
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType

from contracts import endpoints
from contracts.messages.health import HealthReply
from contracts.messages.keys import CreateApiKey
from contracts.runtime.bus import call
from contracts.runtime.config import load_settings
from hub_deploy.natsserver import NatsServer, free_port
from hub_deploy.services import SERVICES, health_of
from hub_deploy.supervisor import RestartBudget, child_environment

pytestmark = pytest.mark.slow


def wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed by the launcher:\n{path.read_text(errors='replace')}")


def nats_pid(data_dir: Path) -> int:
    """The pid of the nats-server running with its config under `data_dir`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if args[0].endswith(b"nats-server") and str(data_dir).encode() in b" ".join(args):
                return int(cmdline.parent.name)
    raise AssertionError(f"no nats-server runs for {data_dir}")


def fork_server_pid(launcher_pid: int) -> int:
    pid = fork_server_pid_or_none(launcher_pid)
    if pid is None:
        raise AssertionError("the launcher runs no fork server")
    return pid


def fork_server_pid_or_none(launcher_pid: int) -> int | None:
    """The fork server: the launcher's child whose command is `python -m hub_deploy.forkserver` (its forked services
    keep that command line but are named hub-<service>)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, IndexError):
            pid = int(cmdline.parent.name)
            forked = Path(f"/proc/{pid}/comm").read_text().startswith("hub-")
            if b"hub_deploy.forkserver" in cmdline.read_bytes() and parent_of(pid) == launcher_pid and not forked:
                return pid
    return None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def forked_by_the_fork_server(pid: int, launcher_pid: int, name: str) -> bool:
    """`pid` runs the service `name`, forked by the fork server (its command line), adopted by the launcher."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    return b"hub_deploy.forkserver" in cmdline and comm == f"hub-{name}" and parent_of(pid) == launcher_pid


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_launcher(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m hub_deploy up`, as `./hub start` runs it, its output in `log_path`."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "hub_deploy", "up"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


async def test_the_whole_hub_starts_heals_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    nats_port = free_port()
    env = hub_env(f"nats://127.0.0.1:{nats_port}", tmp_path / "data", HUB_NATS_PORT=str(nats_port), HUB_LAYOUT="split")
    log_path = tmp_path / "launcher.log"
    launcher = start_launcher(env, log_path)
    try:
        await asyncio.to_thread(wait_for_text, log_path, "GenImage Hub is running.", launcher, 90)
        banner = log_path.read_text()
        assert f"http://127.0.0.1:{env['HUB_UI_PORT']}/" in banner
        assert str(tmp_path / "data") in banner

        # The health command a user runs reaches every service through NATS.
        health = subprocess.run(
            [sys.executable, "-m", "hub_deploy", "health"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0, health.stdout + health.stderr
        for name, _module in SERVICES:
            assert f"{name:<10} ok" in health.stdout
        assert "6 replica(s) answered $SRV.PING" in health.stdout

        # The UI and the gateway listen on loopback where the banner says.
        for port in (env["HUB_UI_PORT"], env["HUB_GATEWAY_PORT"]):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert f"http://127.0.0.1:{env['HUB_GATEWAY_PORT']}/mcp" in banner

        # A service that dies is restarted by the launcher, forked from its fork server (which imported the
        # services' modules once, so a restart skips them), even when the fork server itself was killed first.
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}", max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        before = await health_of(nc, "stats")
        assert forked_by_the_fork_server(before.pid, launcher.pid, "stats")
        killed = fork_server_pid(launcher.pid)
        os.kill(killed, signal.SIGKILL)
        await asyncio.to_thread(wait_for_text, log_path, "the fork server exited; starting it again", launcher, 30)
        deadline = time.monotonic() + 30
        while fork_server_pid_or_none(launcher.pid) in (None, killed):  # started again at once
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.1)
        os.kill(before.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                after = await health_of(nc, "stats")
                if after.instance_id != before.instance_id:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.2)
        assert after.ok and after.pid != before.pid
        assert forked_by_the_fork_server(after.pid, launcher.pid, "stats")

        # nats-server killed -9 is restarted on the same port and data folder: what JetStream held is still
        # there, and every service answers again through it.
        js = nc.jetstream()
        await js.add_stream(name="LAUNCHER_TEST", subjects=["launcher.test"], storage=StorageType.FILE)
        await js.publish("launcher.test", b"kept")
        os.kill(nats_pid(tmp_path / "data"), signal.SIGKILL)
        await asyncio.to_thread(wait_for_text, log_path, "nats-server restarted", launcher, 30)
        assert "nats-server exited; restarting it on the same port and data folder" in log_path.read_text()
        deadline = time.monotonic() + 60
        for name, _module in SERVICES:
            while True:
                with contextlib.suppress(Exception):
                    if (await health_of(nc, name)).ok:
                        break
                assert time.monotonic() < deadline, f"{name} unhealthy after NATS came back:\n{log_path.read_text()}"
                await asyncio.sleep(0.2)
        assert (await js.get_last_msg("LAUNCHER_TEST", "launcher.test")).data == b"kept"
        pids = [(await health_of(nc, name)).pid for name, _ in SERVICES]
        await nc.close()

        # Ctrl-C stops everything cleanly.
        launcher.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(launcher.wait, 60) == 0
        assert "the hub has stopped" in log_path.read_text()
        assert not port_is_open(nats_port)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        for name, _module in SERVICES:
            assert (tmp_path / "data" / f"{name}.sqlite3").exists()
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
    finally:
        if launcher.poll() is None:
            launcher.kill()


SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"  # what the shipped default render type loads


async def generate_one(env: dict[str, str], api_key: str) -> None:
    """One generation through the gateway's REST API, to its image."""
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['HUB_GATEWAY_PORT']}", headers=headers) as http:
        submitted = await http.post("/api/v1/generations", json={"prompt": "a lighthouse", "steps": 1}, timeout=30)
        assert submitted.status_code == 202, submitted.text
        deadline = time.monotonic() + 60
        while (generation := (await http.get(submitted.headers["location"], timeout=30)).json())["done"] is False:
            assert time.monotonic() < deadline, generation
            await asyncio.sleep(0.2)
        assert generation["status"] == "completed", generation
        image = await http.get(generation["images"][0]["url"], timeout=30)
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")


async def healths(nc: NatsClient, timeout_s: float) -> dict[str, HealthReply]:
    """Every service's health reply, asked until all answer healthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            replies = {name: await health_of(nc, name) for name, _module in SERVICES}
            if all(reply.ok for reply in replies.values()):
                return replies
        assert time.monotonic() < deadline, "the services did not all answer healthy"
        await asyncio.sleep(0.2)


async def test_the_single_layout_runs_every_service_in_one_process_and_is_restarted(tmp_path: Path) -> None:
    nats_port = free_port()
    data = tmp_path / "data"
    env = hub_env(f"nats://127.0.0.1:{nats_port}", data, HUB_NATS_PORT=str(nats_port), HUB_LAYOUT="single")
    log_path = tmp_path / "launcher.log"
    launcher = start_launcher(env, log_path)
    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}", max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await asyncio.to_thread(wait_for_text, log_path, "GenImage Hub is running.", launcher, 90)
        before = await healths(nc, 30)
        pids = {reply.pid for reply in before.values()}
        assert len(pids) == 1 and launcher.pid not in pids, before  # one process, not the launcher's
        async with ComfyUIDouble(name="single", models={"checkpoints": [SDXL_CHECKPOINT]}, work_seconds=0.0) as comfy:
            await add_instance(nc, comfy, "single")
            key = await call(nc, endpoints.Gateway.KEYS_CREATE, CreateApiKey(name="single"))
            await generate_one(env, key.secret)

            # kill -9 of the one process: the launcher starts it again, every service comes back with what its
            # database held (the instance, the API key), and generations run again.
            (single_pid,) = pids
            os.kill(single_pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                after = await healths(nc, 60)
                if all(after[name].instance_id != before[name].instance_id for name in after):
                    break
                assert time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.2)
            assert {reply.pid for reply in after.values()} - {single_pid}
            await generate_one(env, key.secret)

        # Each service kept its tables in its own database, though they shared a process.
        own_tables = {"registry": "render_type", "prompt": "style", "stats": "generation", "dispatch": "job"}
        own_tables |= {"gateway": "api_key", "ui": "admin_account"}
        for service, table in own_tables.items():
            with sqlite3.connect(data / f"{service}.sqlite3") as db:
                names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert names & set(own_tables.values()) == {table}, (service, names)

        launcher.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(launcher.wait, 60) == 0
        assert "the hub has stopped" in log_path.read_text()
    finally:
        await nc.close()
        if launcher.poll() is None:
            launcher.kill()


async def test_without_the_fork_server_each_service_process_is_started_with_python_m(tmp_path: Path) -> None:
    # HUB_FORK_SERVER=off saves the fork server's memory: the launcher runs `python -m hub_deploy.single` itself.
    nats_port = free_port()
    env = hub_env(f"nats://127.0.0.1:{nats_port}", tmp_path / "data", HUB_NATS_PORT=str(nats_port))
    env |= {"HUB_LAYOUT": "single", "HUB_FORK_SERVER": "off"}
    log_path = tmp_path / "launcher.log"
    launcher = start_launcher(env, log_path)
    try:
        await asyncio.to_thread(wait_for_text, log_path, "GenImage Hub is running.", launcher, 90)
        with pytest.raises(AssertionError, match="no fork server"):
            fork_server_pid(launcher.pid)
        children = [
            p for p in Path("/proc").glob("[0-9]*") if p.name.isdigit() and parent_of(int(p.name)) == launcher.pid
        ]
        commands = [p.joinpath("cmdline").read_bytes().split(b"\0") for p in children]
        assert [b"-m", b"hub_deploy.single"] in [c[1:3] for c in commands], commands
        launcher.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(launcher.wait, 60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_free_ports_are_never_handed_out_twice() -> None:
    # The kernel offers an unbound port again (a CI run gave the gateway the port just chosen for NATS); a few
    # hundred picks without the guard repeat some ports.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_the_hub_refuses_to_start_on_a_port_in_use_and_names_it(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        nats_port = free_port()
        env = hub_env(f"nats://127.0.0.1:{nats_port}", tmp_path / "data", HUB_NATS_PORT=str(nats_port))
        in_use = subprocess.run(
            [sys.executable, "-m", "hub_deploy", "up"],
            env={**env, "HUB_GATEWAY_PORT": str(taken)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert in_use.returncode == 1
    output = in_use.stdout + in_use.stderr
    assert f"127.0.0.1:{taken} (HUB_GATEWAY_PORT) cannot be used" in output, output
    assert "nats-server started" not in output  # refused before anything started

    twice = subprocess.run(
        [sys.executable, "-m", "hub_deploy", "up"],
        env={**env, "HUB_UI_PORT": env["HUB_GATEWAY_PORT"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert twice.returncode == 1
    assert "HUB_UI_PORT and HUB_GATEWAY_PORT are both" in twice.stdout + twice.stderr


def test_a_crashed_service_is_restarted_at_once_and_a_crash_loop_ever_slower() -> None:
    budget = RestartBudget()
    pauses = []
    while budget.may_restart():
        pauses.append(budget.pause_s)
    assert pauses == [0.0, 0.5, 1.0, 2.0, 4.0]  # five restarts a minute at most, the first without a pause


def test_services_keep_their_bytecode_in_the_data_folder_where_none_may_be_written_beside_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without bytecode every restart compiles each imported module again: seconds of a loaded machine's CPU.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = child_environment(load_settings("launcher", {"HUB_DATA_DIR": str(tmp_path)}), "nats://127.0.0.1:4222")
    assert "PYTHONDONTWRITEBYTECODE" not in env
    subprocess.run([sys.executable, "-c", "import dispatch_service.replica"], env=env, check=True, timeout=60)
    assert list((tmp_path / "pycache").rglob("replica*.pyc")), "the service's modules were not compiled there"


def test_the_single_process_stops_every_service_and_exits_1_when_one_cannot_start(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # The launcher checks its ports first; here the gateway meets a port taken after that check. The process must
    # not serve on without its gateway: the others stop and it exits 1, for the launcher to start it again.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        env = hub_env(nats_server.url, tmp_path / "data", HUB_GATEWAY_PORT=str(squatter.getsockname()[1]))
        single = subprocess.run(
            [sys.executable, "-m", "hub_deploy.single"], env=env, capture_output=True, text=True, timeout=120
        )
    assert single.returncode == 1, single.stderr
    failures = [json.loads(line) for line in single.stderr.splitlines() if '"service could not start"' in line]
    assert [f["service"] for f in failures] == ["gateway"], single.stderr
    assert "could not listen" in failures[0]["error"]
    stopped = {json.loads(line).get("service") for line in single.stderr.splitlines() if '"service stopped"' in line}
    assert stopped == {name for name, _module in SERVICES}, single.stderr
