"""pytest-benchmark suite for the ``assign`` family: linear_sum_assignment (DETR matching).

The workloads (problem sets, SciPy and lapx references, the total-cost check) come from
``pyvision_ops.bench.assign_workloads``, shared with ``python -m pyvision_ops.bench``;
``conftest.py`` parametrizes this test over them.
"""

from __future__ import annotations

from typing import Callable

import pytest

from pyvision_ops.bench.workloads import Workload

__all__: list = []


@pytest.mark.workload_family("assign")
def test_assign(
    benchmark_workload: Callable[[Workload, str, str], None], workload: Workload, device: str, implementation: str
) -> None:
    benchmark_workload(workload, device, implementation)
