"""pytest-benchmark suite for the ``unpool`` family: max pooling with indices and max unpooling.

The workloads (shapes, references, checks) come from ``pyvision_ops.bench.workloads``, shared
with ``python -m pyvision_ops.bench``; ``conftest.py`` parametrizes this test over them.
"""

from __future__ import annotations

from typing import Callable

import pytest

from pyvision_ops.bench.workloads import Workload

__all__: list = []


@pytest.mark.workload_family("unpool")
def test_unpool(
    benchmark_workload: Callable[[Workload, str, str], None], workload: Workload, device: str, implementation: str
) -> None:
    benchmark_workload(workload, device, implementation)
