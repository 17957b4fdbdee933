"""Shared fixtures of the test suite: paths, a real nats-server, services as subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_DIR = REPO_ROOT.parent / "shared" / "comfyui-protocol"


@pytest.fixture(scope="session")
def protocol_dir() -> Path:
    """The recorded ComfyUI 0.3.64 exchanges (../shared/comfyui-protocol beside the repository)."""
    if not PROTOCOL_DIR.is_dir():
        pytest.fail(f"recorded ComfyUI exchanges not found at {PROTOCOL_DIR}: clone the repository beside shared/")
    return PROTOCOL_DIR
