"""The assignment solvers' C++ under AddressSanitizer and UBSan, without torch.

tests/cpp/assign_solvers_agree.cpp runs the CPU solver (every transpose variant) and the CUDA
kernel's algorithm (assign_sap_team.h with a team of one) on thousands of random problems and requires
equal statuses and totals. Built here with the system C++ compiler; skipped when there is none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitized_cpp import run_sanitized


@pytest.mark.slow
def test_solvers_agree_under_sanitizers(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "assign_solvers_agree.cpp", ["assign/assign_cpu_simd.cpp", "common/cpu_features.cpp"], ["2000"])
    assert "bad 0" in out
