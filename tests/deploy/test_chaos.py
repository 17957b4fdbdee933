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


def timing_misses(output: str, fault: str) -> list[str]:
    """The rehearsal's misses for one fault, which may only be timings: how soon jobs flow again on a loaded
    machine (the full suite keeps both cores busy) is a figure the rehearsal prints, not something a test asserts.
    Any other miss (a failed, stuck, unlogged or unfetchable job) fails the test."""
    lines = output.splitlines()
    after_table = lines[max(i for i, line in enumerate(lines) if line.startswith("| ")) + 1 :]
    prefix = f"{fault}: "
    found = [m for line in after_table if line.startswith(prefix) for m in line[len(prefix) :].split(", ")]
    timings = ("flowing again after", "no job completed for")
    assert all(miss.startswith(timings) for miss in found), output
    return found


def test_the_rehearsal_kills_a_service_mid_burst_and_accounts_for_every_job() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--jobs", "6", "--work", "0.1", "--faults", "stats"],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    output = run.stdout + run.stderr
    misses = timing_misses(output, "kill -9 stats")
    assert run.returncode == (1 if misses else 0), output
    row = row_of(output, "kill -9 stats")
    accepted = int(row["accepted"])
    assert accepted >= 6  # the burst, and the probe sent after the restart
    assert int(row["completed"]) == int(row["log rows"]) == accepted, row
    assert row["failed"] == row["stuck"] == row["unfetchable"] == "0", row
    # A number, not "never": the rehearsal saw the launcher run a new process (it restarts a crashed one at once,
    # so this may print 0.0)
    assert float(row["restart s"]) >= 0, row
    assert row["flowing s"] != "never", row  # jobs flowed again after the restart
    assert misses or "goal met on every fault" in output
