"""Timing primitives shared by the runner and the copy-bandwidth measurement."""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import torch

__all__ = ["synchronizer", "time_calls", "repeat_without_gc"]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(function: Callable[[], Any], number: int, synchronize: Callable[[], None]) -> float:
    """Seconds per call of ``number`` back-to-back calls of ``function`` (results dropped at once).

    The device is synchronised before the clock starts and before it stops, so asynchronous
    (CUDA) work is timed, not just its launch.
    """
    synchronize()
    start = time.perf_counter()
    for _ in range(number):
        function()
    synchronize()
    return (time.perf_counter() - start) / number


def repeat_without_gc(take_sample: Callable[[int], None], repeats: int) -> None:
    """Call ``take_sample(repeat)`` for ``repeat`` in ``range(repeats)`` with the garbage collector off
    (a collection inside a sample would be charged to whichever implementation was running)."""
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(repeats):
            take_sample(repeat)
    finally:
        if gc_was_enabled:
            gc.enable()
