"""A service stopped cleanly ends its process at once: its restart, or the hub's stop, does not wait for the
interpreter's teardown (seconds on a loaded machine), nor for a thread some library left running."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from harness import service_script_started

pytestmark = pytest.mark.slow

# The registry service as `python -m registry_service` runs it, with a non-daemon thread that outlives it by minutes.
WITH_A_STRAY_THREAD = """
import threading, time
threading.Thread(target=time.sleep, args=(600,), name="left-running").start()
from contracts.runtime.service import run_main
run_main("registry", "registry_service.app")
"""


def test_a_stopped_service_exits_at_once_even_with_a_thread_left_running(tmp_path: Path) -> None:
    with service_script_started(tmp_path, WITH_A_STRAY_THREAD) as (process, log_path):
        process.send_signal(signal.SIGTERM)
        # Without the immediate exit the interpreter waits for the thread: 600 s.
        assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")
        assert "service stopped" in log_path.read_text(errors="replace")
