"""Benchmark harness: our ops against their references, checked, then timed side by side.

* :mod:`~pyvision_ops.bench.workloads` — the registry of workloads, defined once and shared by
  the CLI and the pytest-benchmark suites in ``bench/``.
* :mod:`~pyvision_ops.bench.runner` — correctness check, interleaved timing, machine info.
* :mod:`~pyvision_ops.bench.timing` — synchronised back-to-back timing with the GC off.
* :mod:`~pyvision_ops.bench.bandwidth` — the machine's copy bandwidth (the memory-bound ceiling).
* :mod:`~pyvision_ops.bench.report` — the table, JSON and plot.
* :mod:`~pyvision_ops.bench.cli` — ``python -m pyvision_ops.bench [--device cuda] [--ops NAME ...]
  [--quick] [--json FILE] [--plot FILE.png] [--threads N] [--thread-scaling] [--list]``.

Our operators are imported only when a workload runs, so listing workloads needs no build.
"""

from pyvision_ops.bench.workloads import (
    WORKLOADS,
    CheckFailed,
    Workload,
    all_workloads,
    register,
    select_workloads,
)

__all__ = ["WORKLOADS", "CheckFailed", "Workload", "all_workloads", "register", "select_workloads"]
