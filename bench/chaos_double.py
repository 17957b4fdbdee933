"""A ComfyUI test double as its own process (so the chaos rehearsal can kill it -9) that journals its prompts.

    .venv/bin/python bench/chaos_double.py --name a --port 8188 --work-seconds 0.2 --journal a.jsonl \
        --models '{"checkpoints": ["x.safetensors"]}'

Each prompt the double accepts (POST /prompt) and each one its worker starts is appended to the journal as a
JSON line, {"event": "received" | "executed", "prompt_id": ...}, written through at once: what a kill -9 ends
is already on disk, so the rehearsal counts every run of a job, across restarts of the double.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from doubles.comfyui import ComfyUIDouble


class Journal(list):  # type: ignore[type-arg]
    """A list whose appends are also written to the journal, one JSON line each, flushed at once."""

    def __init__(self, out: TextIO, event: str) -> None:
        super().__init__()
        self.out = out
        self.event = event

    def append(self, item: Any) -> None:
        prompt_id = item.get("prompt_id") if isinstance(item, dict) else item
        self.out.write(json.dumps({"event": self.event, "prompt_id": prompt_id}) + "\n")
        self.out.flush()
        super().append(item)


async def serve(args: argparse.Namespace) -> None:
    double = ComfyUIDouble(name=args.name, work_seconds=args.work_seconds, models=args.models)
    with args.journal.open("a", encoding="utf-8", buffering=1) as out:
        double.prompts_received = Journal(out, "received")
        double.executed_prompt_ids = Journal(out, "executed")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await double.start(args.port)
        print(f"ComfyUIDouble {args.name} listening on {double.url}", flush=True)  # readiness line
        await stop.wait()
        await double.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--work-seconds", type=float, default=0.2)
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--models", type=json.loads, required=True, help='JSON, e.g. {"checkpoints": ["a.ckpt"]}')
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
