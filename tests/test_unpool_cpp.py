"""The pooling family's torch-free C++ under AddressSanitizer and UBSan.

tests/cpp/unpool_kernels_replayed.cpp runs the unpooling CUDA kernels' per-element functions
(csrc/unpool/unpool_cuda_elements.h: tile_unpool, claim + resolve, scatter, gather) for every
element on the host in the glue's order (the tile kernel, its claim + resolve fallback, the
status words), with 32- and 64-bit offsets, against references written from the definitions
(last source in raster order wins, the smallest bad logical position is the error): 1-D, 2-D and
3-D windows, planar and channels-last, flat and compact indices, indices outside their window,
duplicates, out-of-range indices, uncovered target rims, windows that do not tile, values read
through strided views. Built with the system C++ compiler (tests/sanitized_cpp.py); skipped when
there is none.
"""

from __future__ import annotations

from pathlib import Path

from sanitized_cpp import run_sanitized


def test_cuda_unpool_kernels_replayed_on_the_host(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "unpool_kernels_replayed.cpp", [], [])
    assert "bad 0" in out, out[-4000:]
    assert "WRONG" not in out
    # the tile kernel, its fallback, and claim + resolve where the windows do not tile all ran
    assert " tile ok" in out and "tile -> claim+resolve ok" in out
    no_tiling = [line for line in out.splitlines() if "(no tiling)" in line]
    assert no_tiling and all(line.endswith(" claim+resolve ok") for line in no_tiling)
    assert "32-bit offsets" in out and "64-bit offsets" in out
