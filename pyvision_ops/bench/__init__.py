"""Benchmark harness: our ops against their references, checked, then timed side by side.

* :mod:`~pyvision_ops.bench.workloads` — the registry of workloads (a package: ``core`` plus one
  module per family, table order in ``workloads.FAMILIES``), defined once and shared by the CLI
  and the pytest-benchmark suite in ``bench/``.
* :mod:`~pyvision_ops.bench.runner` — correctness check, interleaved timing, machine info.
* :mod:`~pyvision_ops.bench.timing` — synchronised back-to-back timing with the GC off.
* :mod:`~pyvision_ops.bench.bandwidth` — the machine's copy bandwidth (the memory-bound ceiling).
* :mod:`~pyvision_ops.bench.report` — the table, JSON and plot.
* :mod:`~pyvision_ops.bench.cli` — ``python -m pyvision_ops.bench [--device cuda] [--ops NAME ...]
  [--quick] [--json FILE] [--plot FILE.png] [--threads N] [--thread-scaling] [--list] [--families]``.

Our operators are imported only when a workload runs, so listing workloads needs no build.
"""

from pyvision_ops.bench.workloads import (
    FAMILIES,
    WORKLOADS,
    CheckFailed,
    Workload,
    all_workloads,
    families,
    register,
    select_workloads,
)

__all__ = [
    "FAMILIES",
    "WORKLOADS",
    "CheckFailed",
    "Workload",
    "all_workloads",
    "families",
    "register",
    "select_workloads",
]
