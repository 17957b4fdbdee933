"""prompt-service over real NATS: the starter styles it ships, loaded on the very first start only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nats.aio.client import Client as NatsClient
from prompt_support import build, replace_styles, styles

from contracts.messages.styles import Style


async def test_the_starter_styles_are_loaded_on_the_first_start_only(
    healthy_service, nc: NatsClient, tmp_path: Path
) -> None:
    first = await healthy_service("prompt")
    library = await styles(nc)
    names = {s.name for s in library}
    assert 15 <= len(library) <= 25
    assert {"photographic", "cinematic", "anime", "digital-art", "watercolor", "line-art", "3d-render"} <= names
    assert {"pixel-art", "oil-painting", "comic-book"} <= names
    assert [s.name for s in library if s.is_default] == ["quality"]
    assert all(s.enabled and s.category and s.negative for s in library)
    # Each wraps the prompt at its slot, so the user's subject leads the final prompt.
    assert all(s.positive.count("{prompt}") == 1 for s in library)
    built = await build(nc, "a red bicycle", styles=["watercolor"])
    assert built.positive.startswith("watercolor painting of a red bicycle")

    await replace_styles(nc, [Style(name="mine")])  # the admin removes the starter set
    assert await first.stop() == 0
    second = await healthy_service("prompt")
    assert [s.name for s in await styles(nc)] == ["mine"]
    assert await second.stop() == 0
    with sqlite3.connect(tmp_path / "data" / "prompt.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM setting WHERE key = 'starter_styles_loaded'").fetchone() == (1,)
