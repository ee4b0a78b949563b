"""Shared pytest configuration: markers, the CUDA skip, seeding."""

from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch

# tests/ is not a package: make `import references` work from any working directory.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# torchvision's convention: tests marked `needs_cuda` are skipped where no GPU is visible, and
# `pytest -m needs_cuda` selects exactly the GPU tests (scripts/gpu_check.sh runs them under
# compute-sanitizer).
needs_cuda = pytest.mark.needs_cuda

# Parametrize a test over devices: the CUDA case is collected everywhere and skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_cuda: runs on a CUDA device; skipped when none is available")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """A different but reproducible seed per test: inputs are fresh yet a failure replays."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _grad_mode_on() -> None:
    """Every test starts with grad mode on, whatever an earlier test left behind."""
    torch.set_grad_enabled(True)
