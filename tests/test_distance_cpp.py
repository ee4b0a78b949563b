"""The distance family's mining rules (csrc/distance/distance_mining.h, used by the CUDA kernels)
against copies of the CPU miners' algorithms, under AddressSanitizer and UBSan, without torch.

tests/cpp/distance_mining_agrees.cpp draws random problems full of ties, signed zeros and
infinities, runs batch-hard, semi-hard, the window and the capped hard strategy both ways
(simulating the warp lanes and the arbitrary merge order of the CUDA atomics), and prints the
number of disagreements. Built with the system C++ compiler (tests/sanitized_cpp.py); skipped
when there is none.
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
