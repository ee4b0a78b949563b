"""The Gram family's torch-free C++ under AddressSanitizer and UBSan: the packed CPU kernels and
a host replay of the tensor-core CUDA kernels.

tests/cpp/gram_packed_agrees.cpp runs the packing and micro-kernels of csrc/gram/gram_cpu_simd.cpp
(forward: random shapes, layouts, float32/float16/bfloat16/float64 sources, chunk lengths and
L-slices; backward products S F over random strip ranges, planar and channels-last), with every
buffer allocated to its exact size, against float64 loops. Built with the system C++ compiler
(tests/sanitized_cpp.py); skipped when there is none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitized_cpp import run_sanitized


def test_packed_gram_kernel_under_sanitizers(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "gram_packed_agrees.cpp", ["gram/gram_cpu_simd.cpp", "common/cpu_features.cpp"], ["1000"])
    assert "bad 0" in out


# tests/cpp/gram_mma_emulated.cpp replays the tensor-core CUDA kernels (gram_mma_kernel and
# gram_split_reduce_kernel of csrc/gram/gram_kernel.cu) on the host, lane by lane, with the
# kernel's geometry from csrc/gram/gram.h and ldmatrix / mma.sync / cp.async emulated from the PTX
# ISA; the result must equal a float64 reference bit for bit (inputs are exact in 16 bits), every
# element of G must have one writer, and no shared slot may be left unstaged. What it cannot
# check: the PTX layouts themselves (read from the ISA), timing, and the launch. The same program
# runs the CUDA-core gram_tile_kernel's threads (gram_tile_stage / accumulate / write of gram.h).
def test_mma_kernel_emulated(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "gram_mma_emulated.cpp", [], ["quick"])
    assert "bad 0" in out, out[-4000:]
    assert " ok" in out and "WRONG" not in out
    # the quick set reaches split-K (splits > 1) and multi-tile triangles
    assert "splits 2," in out and "tiles 3:" in out
    assert "tile kernel f32" in out and "tile kernel f64" in out


@pytest.mark.slow
def test_mma_kernel_emulated_all_shapes(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "gram_mma_emulated.cpp", [], [])
    assert "bad 0" in out, out[-4000:]
    assert "splits 4," in out and "WRONG" not in out
