"""pytest-benchmark suite over every registered workload: all families, both implementations.

The workloads (shapes, references, checks) come from ``pyvision_ops.bench.workloads``, shared
with ``python -m pyvision_ops.bench``; ``conftest.py`` parametrizes this test over every one of
them, the devices each supports and both implementations. Ids are
``<Workload.test_id>-<device>-<implementation>``, so ``-k unpool``, ``-k "models and cpu"`` or
``-k backward`` select by family, device or mode.
"""

from __future__ import annotations

from typing import Callable

from pyvision_ops.bench.workloads import Workload

__all__: list = []


def test_workload(
    benchmark_workload: Callable[[Workload, str, str], None], workload: Workload, device: str, implementation: str
) -> None:
    benchmark_workload(workload, device, implementation)
