"""The packed CPU Gram kernel's C++ under AddressSanitizer and UBSan, without torch.

tests/cpp/gram_packed_agrees.cpp runs the packing and micro-kernels of csrc/gram/gram_cpu_simd.cpp
on random shapes, layouts, source types, chunk lengths and L-slices, with every buffer allocated
to its exact size, and compares each Gram with a float64 loop. Built here with the system C++
compiler; skipped when there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def test_packed_gram_kernel_under_sanitizers(tmp_path: Path) -> None:
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    binary = tmp_path / "gram_packed_agrees"
    command = [
        cxx, "-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
        f"-I{ROOT / 'csrc'}",
        str(ROOT / "tests" / "cpp" / "gram_packed_agrees.cpp"),
        str(ROOT / "csrc" / "gram" / "gram_cpu_simd.cpp"),
        "-o", str(binary),
    ]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 and "sanitize" in built.stderr:
        pytest.skip(f"{cxx} cannot build with sanitizers here: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-4000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    env.pop("LD_PRELOAD", None)
    ran = subprocess.run([str(binary), "1000"], capture_output=True, text=True, env=env, timeout=600)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    assert "bad 0" in ran.stdout
