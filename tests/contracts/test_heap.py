"""A started service moves its heap out of the garbage collector's sight (contracts.runtime.heap): checked in the
service's own process, as `python -m <service>` runs it, and in a process of its own for the settling's timing (the
test process's collector is left as it is)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import service_script_started

from contracts.runtime import heap

pytestmark = pytest.mark.slow

# The registry service as `python -m registry_service` runs it, reporting its collector's state every 0.2 s.
REPORTING = """
import gc, json, sys, threading, time
def report():
    while True:
        time.sleep(0.2)
        with open(sys.argv[1], "w") as out:
            json.dump({"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}, out)
threading.Thread(target=report, daemon=True).start()
from contracts.runtime.service import run_main
run_main("registry", "registry_service.app")
"""


def test_a_started_service_freezes_its_heap_and_spaces_out_young_collections(tmp_path: Path) -> None:
    report = tmp_path / "gc.json"
    with service_script_started(tmp_path, REPORTING, str(report)) as (process, log_path):
        state: dict[str, object] = {}
        settled_by = time.monotonic() + heap.SETTLE_AFTER_S + 10
        while time.monotonic() < settled_by:
            state = json.loads(report.read_text()) if report.exists() else {}
            if state.get("frozen"):
                break
            time.sleep(0.2)
        assert state.get("frozen", 0) > 10_000, state  # the modules, classes and schemas of the service
        assert state["threshold"][0] == heap.GEN0_THRESHOLD, state  # type: ignore[index]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")


# Several services starting one after the other in one process settle once, after the last start.
STARTS = """
import asyncio, gc, json
from contracts.runtime import heap
heap.SETTLE_AFTER_S = 0.3
settled = []
original = heap.settle
heap.settle = lambda: (settled.append(asyncio.get_running_loop().time()), original())
async def main():
    loop = asyncio.get_running_loop()
    first = loop.time()
    for _ in range(3):
        heap.settle_soon()
        await asyncio.sleep(0.1)
    last = loop.time() - 0.1
    await asyncio.sleep(0.6)
    print(json.dumps({"settled_after_last_s": [at - last for at in settled], "frozen": gc.get_freeze_count()}))
asyncio.run(main())
"""


def test_services_started_together_settle_once_after_the_last() -> None:
    done = subprocess.run([sys.executable, "-c", STARTS], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert len(result["settled_after_last_s"]) == 1, result
    assert 0.25 <= result["settled_after_last_s"][0] <= 0.6, result
    assert result["frozen"] > 0, result
