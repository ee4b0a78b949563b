"""The benchmark workloads, defined once and shared by the CLI and the pytest-benchmark suite.

* :mod:`~pyvision_ops.bench.workloads.core` — :class:`Workload`, the registry, the comparison
  helpers; family-independent.
* one module per family, named by the family: :mod:`~pyvision_ops.bench.workloads.unpool`,
  :mod:`~pyvision_ops.bench.workloads.gram`, :mod:`~pyvision_ops.bench.workloads.assign`,
  :mod:`~pyvision_ops.bench.workloads.distance` (op families, as in ``csrc/<family>/``) and
  :mod:`~pyvision_ops.bench.workloads.models` (whole training steps: what a user gets end to end).

:data:`FAMILIES` is the one place that says which families exist and in which order they appear
in the table. Family modules import from ``core`` only, so they can be imported in any order;
the order of the table comes from :data:`FAMILIES`, never from the order of the imports.
"""

from __future__ import annotations

import importlib
from typing import Tuple

from pyvision_ops.bench.workloads.core import (
    MODES,
    WORKLOADS,
    CheckFailed,
    Inputs,
    Workload,
    all_workloads,
    declare_families,
    families,
    register,
    select_workloads,
)

__all__ = [
    "FAMILIES",
    "MODES",
    "WORKLOADS",
    "CheckFailed",
    "Inputs",
    "Workload",
    "all_workloads",
    "families",
    "register",
    "select_workloads",
]

#: The families, in table order; each is the module ``pyvision_ops.bench.workloads.<name>``.
FAMILIES: Tuple[str, ...] = ("unpool", "gram", "assign", "distance", "metric_learning", "attention", "models")

declare_families(FAMILIES)
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
del _family
