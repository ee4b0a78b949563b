"""The distance family's torch-free C++ under AddressSanitizer and UBSan.

tests/cpp/distance_mining_agrees.cpp: the mining rules (csrc/distance/distance_mining.h, used by
the CUDA kernels) against copies of the CPU miners' algorithms on random problems full of ties,
signed zeros and infinities: batch-hard, semi-hard, the window and the capped hard strategy both
ways (simulating the warp lanes and the arbitrary merge order of the CUDA atomics).
tests/cpp/distance_hierarchical_agrees.cpp: the hierarchical loss's per-entry rule.
tests/cpp/distance_tiles_emulated.cpp, tests/cpp/distance_warps_replayed.cpp: the CUDA tile and warp
kernels replayed on the host.
Each prints the number of disagreements. Built with the system C++ compiler
(tests/sanitized_cpp.py); skipped when there is none.
"""

from __future__ import annotations

from pathlib import Path

from sanitized_cpp import run_sanitized


def test_mining_rules_agree_with_the_cpu_miners(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "distance_mining_agrees.cpp", [], ["300"])
    assert "bad 0" in out


def test_hierarchical_entries_agree_with_the_triplet_definition(tmp_path: Path) -> None:
    """csrc/distance/distance_hierarchical.h (the CUDA kernel's per-entry rule) against a triple
    loop over every (anchor, positive, negative), under ASan/UBSan."""
    out = run_sanitized(tmp_path, "distance_hierarchical_agrees.cpp", [], ["300"])
    assert "bad 0" in out


def test_cuda_tile_kernels_replayed_on_the_host(tmp_path: Path) -> None:
    """tests/cpp/distance_tiles_emulated.cpp: distance_tiles_kernel and batch_hard_tiles_kernel
    replayed thread by thread with the kernels' own tile code (csrc/distance/distance_cuda_tile.h:
    geometry, shared-memory loader, epilogue) and their control flow restated (double-buffered
    steps, grid-stride loops, symmetric exit, half-warp and column merges, atomics, exact pairs),
    against a float64 brute force bit for bit on integer embeddings, under ASan/UBSan. What it
    cannot check: the hardware, timing, and whether the restated control flow is the .cu's."""
    out = run_sanitized(tmp_path, "distance_tiles_emulated.cpp", [], [])
    assert "bad 0" in out, out[-4000:]
    assert "WRONG" not in out
    # both kernels, the symmetric and the anchor-block form, and pairs on the exact path
    assert "tiles f32" in out and "tiles f64" in out and "batch-hard" in out
    assert " symmetric " in out and " block " in out
    assert any(line.split("exact pairs")[1].split()[0] != "0" for line in out.splitlines() if "exact pairs" in line)


def test_cuda_warp_kernels_replayed_on_the_host(tmp_path: Path) -> None:
    """tests/cpp/distance_warps_replayed.cpp: the warp-per-row kernels' bodies
    (csrc/distance/distance_warp_kernels.h: top-k collection, batch-hard, semi-hard, window / hard
    count and fill) run with a Warp of 32 std::threads in lockstep (a barrier at every ballot and
    shuffle), grids of 1 and 3 warps, against top-k and batch-hard written from their definitions
    and one sequential scanner for the other miners, under ASan/UBSan."""
    out = run_sanitized(tmp_path, "distance_warps_replayed.cpp", [], [])
    assert "bad 0" in out, out[-4000:]
    assert "WRONG" not in out
    assert "topk f32" in out and "topk f64" in out and "(wrong thresholds)" in out and "miners f64" in out
