"""The packed CPU Gram kernels' C++ under AddressSanitizer and UBSan, without torch.

tests/cpp/gram_packed_agrees.cpp runs the packing and micro-kernels of csrc/gram/gram_cpu_simd.cpp
(forward: random shapes, layouts, float32/float16/bfloat16/float64 sources, chunk lengths and
L-slices; backward products S F over random strip ranges, planar and channels-last), with every
buffer allocated to its exact size, against float64 loops. Built with the system C++ compiler
(tests/sanitized_cpp.py); skipped when there is none.
"""

from __future__ import annotations

from pathlib import Path

from sanitized_cpp import run_sanitized


def test_packed_gram_kernel_under_sanitizers(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "gram_packed_agrees.cpp", ["gram/gram_cpu_simd.cpp", "common/cpu_features.cpp"], ["1000"])
    assert "bad 0" in out
