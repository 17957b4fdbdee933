"""CPU and time of one ComfyUI run through the dispatcher's client (`ComfyClient.run`): submit, follow its
WebSocket messages to the end. Isolates what the hub's ComfyUI client costs per job from the rest of the hub.

    .venv/bin/python bench/comfyui_client_bench.py [--runs 300] [--rounds 3]

The client and an instant ComfyUI test double run in this one process, so the CPU printed (process time per run)
is both sides' together: the client's requests, WebSocket handshakes and message handling, and the double's
answers to them. Runs are one after the other, each a new workflow (nothing cached). Compare two versions of the
client in one sitting (the machine's load moves the figures between sittings).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from doubles.comfyui import ComfyUIDouble

from dispatch_service.comfyui import ComfyClient


def workflow(color: int) -> dict[str, Any]:
    """A small saved image: the color makes each run's prompt new to the double's cache."""
    empty = {"width": 8, "height": 8, "batch_size": 1, "color": color}
    return {
        "1": {"class_type": "EmptyImage", "inputs": empty},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


async def one_round(client: ComfyClient, runs: int, first: int) -> tuple[float, float]:
    """(CPU ms per run, wall ms per run) over `runs` runs one after the other."""
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(first, first + runs):
        await client.run(workflow(n), prompt_id=f"bench-{n}")
    return 1000 * (time.process_time() - cpu) / runs, 1000 * (time.perf_counter() - wall) / runs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    comfy = ComfyUIDouble(name="bench", work_seconds=0.0)
    await comfy.start()
    try:
        async with ComfyClient(comfy.url, timeout_s=5) as client:
            await one_round(client, 20, 0)  # warm-up
            figures = [await one_round(client, args.runs, (r + 1) * args.runs) for r in range(args.rounds)]
    finally:
        await comfy.stop()
    cpu = statistics.median(c for c, _ in figures)
    wall = statistics.median(w for _, w in figures)
    print(f"ComfyClient.run, client and double together: CPU {cpu:.2f} ms per run, {wall:.2f} ms per run")
    print("       rounds (CPU / wall ms): " + "  ".join(f"{c:.2f}/{w:.2f}" for c, w in figures))


if __name__ == "__main__":
    asyncio.run(main())
