"""The machine's copy bandwidth: the ceiling that memory-bound workloads are compared with.

Measured as ``dst.copy_(src)`` of a large float32 tensor into a preallocated buffer, counting
the bytes read plus the bytes written. The destination is written once before timing so
that first-touch page faults (about 1 us per 4 KiB page on the development VM, i.e. ~7 GB/s
for fresh memory against 35-56 GB/s for a warm copy) are not part of the ceiling.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import List

import torch

from pyvision_ops.bench.timing import repeat_without_gc, synchronizer, time_calls

__all__ = ["CopyBandwidth", "measure_copy_bandwidth"]


@dataclasses.dataclass
class CopyBandwidth:
    """Result of :func:`measure_copy_bandwidth`; bandwidths in decimal GB/s (1e9 bytes/s)."""

    device: str
    buffer_bytes: int
    median_gbps: float
    best_gbps: float
    samples_seconds: List[float]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_copy_bandwidth(
    device: torch.device, buffer_mib: int = 256, repeats: int = 10, warmup: int = 2
) -> CopyBandwidth:
    """Time ``dst.copy_(src)`` of a ``buffer_mib`` MiB float32 tensor on ``device``.

    Parameters
    ----------
    device : torch.device
    buffer_mib : int
        Size of the source (and of the destination); 256 MiB is far larger than any cache.
    repeats : int
        Timed copies; the median is reported.
    warmup : int
        Untimed copies first (they also fault in the destination's pages).

    Returns
    -------
    CopyBandwidth
        ``median_gbps`` and ``best_gbps`` count read + write bytes: ``2 * buffer_mib`` MiB per copy.
    """
    device = torch.device(device)
    elements = buffer_mib * 1024 * 1024 // 4
    source = torch.ones(elements, dtype=torch.float32, device=device)
    destination = torch.zeros(elements, dtype=torch.float32, device=device)
    synchronize = synchronizer(device)
    for _ in range(warmup):
        destination.copy_(source)
    synchronize()
    samples: List[float] = []
    repeat_without_gc(lambda _: samples.append(time_calls(lambda: destination.copy_(source), 1, synchronize)), repeats)
    bytes_per_copy = 2 * elements * 4
    del source, destination
    return CopyBandwidth(
        device=str(device),
        buffer_bytes=elements * 4,
        median_gbps=bytes_per_copy / statistics.median(samples) / 1e9,
        best_gbps=bytes_per_copy / min(samples) / 1e9,
        samples_seconds=samples,
    )
