"""The attention family's torch-free C++ under AddressSanitizer and UBSan.

tests/cpp/attention_rows_replayed.cpp runs the one-thread-per-row CUDA kernels' rows
(csrc/attention/attention_rows.h, which attention_kernel.cu calls once per thread) for every row on
the host and compares out, lse, stats, dQ, dK and dV with a float64 softmax reference: grouped-query
heads, L != S, E != Ev, causal, boolean key-padding masks through stride-0 dims, full additive masks
with -inf, dropout, large logits, fully masked rows, L = S = 1. Built with the system C++ compiler
(tests/sanitized_cpp.py); skipped when there is none. The tensor-core kernels are replayed by
tests/test_attention_mma_emulation.py.
"""

from __future__ import annotations

from pathlib import Path

from sanitized_cpp import run_sanitized


def test_cuda_row_kernels_replayed_on_the_host(tmp_path: Path) -> None:
    out = run_sanitized(tmp_path, "attention_rows_replayed.cpp", [], [])
    assert "bad 0" in out, out[-4000:]
    assert "WRONG" not in out
    assert " f32 " in out and " f64 " in out
    # fully masked rows (zeros, lse -inf, zero gradients) are among the cases
    assert any("fully masked rows   0" not in line for line in out.splitlines() if "fully masked rows" in line)
