"""pytest-benchmark suite for the ``gram`` family: Gram matrices and the style loss.

The workloads (VGG-layer shapes, bmm references, tolerances) come from
``pyvision_ops.bench.gram_workloads``, shared with ``python -m pyvision_ops.bench``;
``conftest.py`` parametrizes this test over them.
"""

from __future__ import annotations

from typing import Callable

import pytest

from pyvision_ops.bench.workloads import Workload

__all__: list = []


@pytest.mark.workload_family("gram")
def test_gram(
    benchmark_workload: Callable[[Workload, str, str], None], workload: Workload, device: str, implementation: str
) -> None:
    benchmark_workload(workload, device, implementation)
