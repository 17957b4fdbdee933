"""A service stopped cleanly ends its process at once: its restart, or the hub's stop, does not wait for the
interpreter's teardown (seconds on a loaded machine), nor for a thread some library left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import hub_env

from hub_deploy.natsserver import NatsServer

pytestmark = pytest.mark.slow

# The registry service as `python -m registry_service` runs it, with a non-daemon thread that outlives it by minutes.
WITH_A_STRAY_THREAD = """
import threading, time
threading.Thread(target=time.sleep, args=(600,), name="left-running").start()
from contracts.runtime.service import run_main
run_main("registry", "registry_service.app")
"""


def test_a_stopped_service_exits_at_once_even_with_a_thread_left_running(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    log_path = tmp_path / "registry.log"
    try:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-c", WITH_A_STRAY_THREAD],
                env=hub_env(server.url, tmp_path / "data"),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 90
            while "service started" not in log_path.read_text(errors="replace"):
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            # Without the immediate exit the interpreter waits for the thread: 600 s.
            assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")
            assert "service stopped" in log_path.read_text(errors="replace")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        server.stop()
