"""The chaos rehearsal (bench/chaos.py) in its smallest form, so it keeps working: the whole hub from the launcher,
three ComfyUI doubles in their own processes, a small burst over REST with the stats service killed -9 in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def row_of(output: str, fault: str) -> dict[str, str]:
    """One row of the printed markdown table, by column name."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == fault:
            return dict(zip(head, cells, strict=True))
    raise AssertionError(f"no row for {fault!r} in:\n{output}")


def test_the_rehearsal_kills_a_service_mid_burst_and_accounts_for_every_job() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--jobs", "6", "--work", "0.1", "--faults", "stats"],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    row = row_of(output, "kill -9 stats")
    accepted = int(row["accepted"])
    assert accepted >= 6  # the burst, and the probe sent after the restart
    assert int(row["completed"]) == int(row["log rows"]) == accepted, row
    assert row["failed"] == row["stuck"] == row["unfetchable"] == "0", row
    assert float(row["restart s"]) > 0  # the launcher replaced the killed process
    assert "goal met on every fault" in output
