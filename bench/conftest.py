"""pytest-benchmark plumbing for ``bench/test_bench.py``: the same workloads as the CLI.

Run with ``pytest bench/`` (not part of ``make test``). A test that takes ``workload``,
``device`` and ``implementation`` is parametrized here over every registered workload (all
families, in table order), the devices each supports and both implementations. Each workload
gives two benchmarks, ``ours`` and ``reference``, in one pytest-benchmark group so the
comparison table shows them side by side; ``ours`` first checks its result against the
reference. CUDA cases are skipped without a GPU. pytest-benchmark's own options apply
(``--benchmark-min-rounds``, ``--benchmark-disable-gc``, ``--benchmark-json``,
``--benchmark-compare``, ...).
"""

from __future__ import annotations

from typing import Any, Callable, List

import pytest
import torch

from pyvision_ops.bench.timing import synchronizer
from pyvision_ops.bench.workloads import CheckFailed, Workload, all_workloads

__all__ = ["IMPLEMENTATIONS", "workload_cases"]

IMPLEMENTATIONS = ("ours", "reference")
_DEVICES = ("cpu", "cuda")

_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def workload_cases() -> List[Any]:
    """``pytest.param(workload, device)`` for every registered workload and device it supports."""
    cases = []
    for workload in all_workloads():
        for device in _DEVICES:
            if device not in workload.devices:
                continue
            marks = [_needs_cuda] if device == "cuda" else []
            cases.append(pytest.param(workload, device, id=f"{workload.test_id}-{device}", marks=marks))
    return cases


def pytest_generate_tests(metafunc: Any) -> None:
    if "workload" not in metafunc.fixturenames:
        return
    metafunc.parametrize("workload, device", workload_cases())
    metafunc.parametrize("implementation", IMPLEMENTATIONS)


@pytest.fixture
def benchmark_workload(benchmark: Any) -> Callable[[Workload, str, str], None]:
    """Benchmark one implementation (``"ours"`` or ``"reference"``) of a workload on a device."""

    def run(workload: Workload, device_name: str, implementation: str) -> None:
        device = torch.device(device_name)
        inputs = workload.setup(device)
        if implementation == "ours":
            # A wrong result is a failed benchmark, not a fast one.
            try:
                workload.check(workload.ours(inputs), workload.reference(inputs), inputs)
            except CheckFailed as mismatch:
                pytest.fail(f"{workload.name}: ours disagrees with the reference: {mismatch}")
        function = getattr(workload, implementation)
        synchronize = synchronizer(device)

        def call() -> None:
            function(inputs)
            synchronize()  # CUDA launches are asynchronous: time the work, not the launch

        benchmark.group = f"{workload.name} [{device_name}]"
        benchmark.extra_info.update(
            implementation=implementation,
            label=workload.ours_label if implementation == "ours" else workload.reference_label,
            description=workload.description,
        )
        synchronize()
        benchmark(call)
        moved = workload.bytes_moved if implementation == "ours" else workload.effective_reference_bytes_moved
        stats = getattr(benchmark, "stats", None)
        if moved is not None and stats is not None:  # no stats under --benchmark-disable
            benchmark.extra_info["bytes_moved"] = moved
            benchmark.extra_info["GB/s"] = round(moved / stats.stats.median / 1e9, 2)

    return run
