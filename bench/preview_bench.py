"""What an MCP result's inline preview costs the gateway: CPU per preview, and the encode formats compared.

    .venv/bin/python bench/preview_bench.py [--rounds 30]

In this process, no NATS: `gateway.thumbnails.preview` (decode, whole-factor reduction, encode) of PNG outputs at
512 and 1024 px, for three contents: one colour (what the ComfyUI double saves, so what `cost_bench` measures),
photo-like (smooth light, texture and grain, built here: its PNG is about as large as a photograph's) and the
photo-like one with a transparent corner (an RGBA output); for the opaque ones also the preview made from ComfyUI's
JPEG rendition of the output (quality 60, what an MCP job's preview starts from: dispatch_service.renditions), decoded
by DCT scaling. Then, on the reduced photo-like image, the encode alone
as JPEG and as WebP (method 1, what previews used before 2026-12-03), at quality 80: time and bytes, and their
ratio in this run. Medians over `--rounds` (thread CPU time, so other processes do not count).
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import time
from collections.abc import Callable
from functools import partial

from PIL import Image

from gateway.thumbnails import preview

SIDES = (512, 1024)


def photo_like(side: int) -> Image.Image:
    """Per channel: two gradients (light), blurred noise (texture) and fine noise (grain)."""
    channels = []
    for index, grain in enumerate((28, 36, 44)):
        light = Image.blend(
            Image.linear_gradient("L").rotate(40 * index).resize((side, side)),
            Image.radial_gradient("L").resize((side, side)),
            0.4,
        )
        texture = Image.effect_noise((side // 8, side // 8), 60).resize((side, side), Image.Resampling.BICUBIC)
        channels.append(Image.blend(light, Image.blend(texture, Image.effect_noise((side, side), grain), 0.5), 0.5))
    return Image.merge("RGB", channels)


def with_transparent_corner(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, image.width // 4, image.height // 4))
    return rgba


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def cpu_ms(rounds: int, work: Callable[[], object]) -> float:
    work()  # warm
    spent = []
    for _ in range(rounds):
        started = time.thread_time()
        work()
        spent.append((time.thread_time() - started) * 1000)
    return statistics.median(spent)


def encoded_size(image: Image.Image, kind: str, **options: object) -> int:
    out = io.BytesIO()
    image.save(out, format=kind, quality=80, **options)
    return out.tell()


def print_previews(rounds: int, side: int) -> None:
    photo = photo_like(side)
    contents = {
        "one colour": Image.new("RGB", (side, side), (200, 40, 90)),
        "photo-like": photo,
        "photo-like, transparent corner": with_transparent_corner(photo),
    }
    for name, image in contents.items():
        print_preview(rounds, f"{side:4} px {name:31} PNG ", png(image))
        if image.mode == "RGB":  # an opaque output of an MCP job: its preview starts from ComfyUI's JPEG rendition
            print_preview(rounds, f"{side:4} px {name + ', rendition':31} JPEG", rendition(image))


def print_preview(rounds: int, label: str, source: bytes) -> None:
    made = preview(source)
    assert made is not None
    ms = cpu_ms(rounds, partial(preview, source))
    print(
        f"  {label}{len(source) / 1024:7.0f} KiB -> {made.mime_type:10} {len(made.data) / 1024:5.1f} KiB  {ms:6.2f} ms"
    )


def rendition(image: Image.Image) -> bytes:
    """What ComfyUI answers to `/view?...&preview=jpeg;60` (dispatch_service.renditions.RENDITION)."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=60)
    return out.getvalue()


def print_encoders(rounds: int, side: int) -> None:
    small = photo_like(side).reduce(math.ceil(side / 384))
    jpeg_ms = cpu_ms(rounds, partial(encoded_size, small, "JPEG"))
    webp_ms = cpu_ms(rounds, partial(encoded_size, small, "WEBP", method=1))
    jpeg_kib, webp_kib = encoded_size(small, "JPEG") / 1024, encoded_size(small, "WEBP", method=1) / 1024
    print(
        f"  {small.width:4} px  JPEG {jpeg_ms:5.2f} ms {jpeg_kib:5.1f} KiB   WebP {webp_ms:5.2f} ms {webp_kib:5.1f} KiB"
        f"   WebP / JPEG: {webp_ms / jpeg_ms:4.1f}x the time, {webp_kib / jpeg_kib:4.2f}x the bytes"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    print("preview (decode + reduce + encode), median CPU per preview:")
    for side in SIDES:
        print_previews(rounds, side)
    print("encode alone of the reduced photo-like image, quality 80 (JPEG against WebP method 1):")
    for side in SIDES:
        print_encoders(rounds, side)


if __name__ == "__main__":
    main()
