"""Shared pytest configuration: markers, the CUDA skip, seeding."""

from __future__ import annotations

import os
import sys
import zlib
from typing import Sequence

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


# --------------------------------------------------------------------------------------------
# helpers shared by the op families' tests
# --------------------------------------------------------------------------------------------

#: What bad input may raise: never a crash, never a device assert.
ERRORS = (RuntimeError, ValueError)


def assert_unchanged(before: torch.Tensor, after: torch.Tensor) -> None:
    """The caller's tensor still holds exactly what it held before the call."""
    torch.testing.assert_close(after, before, rtol=0, atol=0, equal_nan=True)


def poison_of(dtype: torch.dtype):
    """A value a kernel must never produce or read: NaN for floats, an invalid index for ints."""
    if dtype.is_floating_point:
        return float("nan")
    return 255 if dtype == torch.uint8 else -1


def poison_allocator(shape: Sequence[int], dtype: torch.dtype, device) -> None:
    """Free a poison-filled block of the output's size just before the op allocates its output.

    The caching (CUDA) and malloc (CPU) allocators hand the same block back, so a kernel that
    forgets to zero-fill or to write every element (a missed tile, an unmirrored triangle)
    returns NaN instead of a plausible zero.
    """
    block = torch.full(tuple(shape), poison_of(dtype), dtype=dtype, device=device)
    del block


def raises(match: str):
    return pytest.raises(ERRORS, match=match)


def sync(device) -> None:
    """Surface any asynchronous CUDA error here, in the test that caused it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def expect_error(fn, tensors: Sequence[torch.Tensor], match: str):
    """``fn()`` raises an error matching ``match`` and leaves ``tensors`` untouched."""
    before = [t.clone() for t in tensors]
    with raises(match) as info:
        fn()
        sync(tensors[0].device)
    for b, t in zip(before, tensors):
        assert_unchanged(b, t)
    sync(tensors[0].device)  # no sticky asynchronous error left behind
    return info
