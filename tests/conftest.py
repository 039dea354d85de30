"""Shared fixtures. Tests run on the CPU with 2 threads; MuJoCo renders through EGL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real EPIC-KITCHENS-100 annotation files, beside the checkout (../shared/epic100), when present.
EPIC100_DIR = REPO_ROOT.parent / "shared" / "epic100"


@pytest.fixture
def epic100_dir() -> Path:
    if not (EPIC100_DIR / "EPIC_100_validation.csv").is_file():
        pytest.skip(f"real EPIC-KITCHENS-100 annotations not found at {EPIC100_DIR}")
    return EPIC100_DIR


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
