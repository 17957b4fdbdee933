"""What following a job's progress costs the dispatcher per ComfyUI message, beside decoding the message.

Replays the recorded 8-node `basic` job (tests/data/comfyui-0.3.64/ws-success-basic-then-cached-reruns.jsonl,
its first prompt: nothing cached) the way `ComfyClient.run` sees it: each frame is decoded (msgspec) and folded
by a `RunTracker`, whose progress model (dispatch_service/progress.py) turns node and step messages into the
job's percent. Printed, measured in one run: microseconds per job for decoding alone, for decoding plus the
tracker, and the tracker's share. The live path adds one progress event at most every 0.1 s on top.

    .venv/bin/python bench/progress_model.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import msgspec

from dispatch_service.comfyui import RunTracker

RECORDINGS = Path(__file__).resolve().parent.parent / "tests/data/comfyui-0.3.64"
RECORDING = RECORDINGS / "ws-success-basic-then-cached-reruns.jsonl"


def first_job_frames() -> tuple[str, list[bytes], set[str]]:
    """The first prompt's text frames as they came over the wire, and its node ids."""
    lines = [json.loads(line) for line in RECORDING.read_text().splitlines() if line.strip()]
    messages = [line["msg"] for line in lines if line.get("kind") == "text" and line.get("dir") == "recv"]
    prompt_id = next(m["data"]["prompt_id"] for m in messages if m["type"] == "execution_start")
    mine = [m for m in messages if m["data"].get("prompt_id") == prompt_id]
    end = next(i for i, m in enumerate(mine) if m["type"] == "execution_success")
    nodes = {node for m in mine if m["type"] == "progress_state" for node in m["data"]["nodes"]}
    return prompt_id, [json.dumps(m).encode() for m in mine[: end + 1]], nodes


def decode_only(frames: list[bytes], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for frame in frames:
            msgspec.json.decode(frame)
    return (time.perf_counter() - started) / rounds


def decode_and_track(prompt_id: str, frames: list[bytes], nodes: set[str], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        tracker = RunTracker("bench", prompt_id, nodes)
        for frame in frames:
            message = msgspec.json.decode(frame)
            if tracker.concerns(message):
                tracker.apply(message)
    return (time.perf_counter() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    prompt_id, frames, nodes = first_job_frames()
    decode_only(frames, 50)  # warm-up
    decoding = decode_only(frames, args.rounds)
    tracking = decode_and_track(prompt_id, frames, nodes, args.rounds)
    print(f"recorded basic job: {len(frames)} messages, {len(nodes)} nodes, {args.rounds} rounds")
    print(f"  decoding only               {decoding * 1e6:8.1f} us per job")
    print(f"  decoding + tracker/progress {tracking * 1e6:8.1f} us per job")
    print(f"  tracker share               {(tracking - decoding) * 1e6:8.1f} us per job ({tracking / decoding:.2f}x)")


if __name__ == "__main__":
    main()
