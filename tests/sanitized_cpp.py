"""Builds a torch-free C++ check from tests/cpp with AddressSanitizer + UBSan and runs it.

Shared by tests/test_assign_cpp.py and tests/test_gram_cpp.py. Skips the calling test when there
is no C++ compiler or it cannot build with sanitizers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def run_sanitized(tmp_path: Path, main: str, sources: Sequence[str], args: Sequence[str]) -> str:
    """Compiles tests/cpp/<main> with csrc/<sources> (-O1, ASan + UBSan, no recovery), runs it with
    `args` and returns its stdout; fails the test on a non-zero exit (sanitizer reports included)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    binary = tmp_path / Path(main).stem
    command = [
        cxx, "-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-pthread",
        f"-I{ROOT / 'csrc'}",
        str(ROOT / "tests" / "cpp" / main),
        *(str(ROOT / "csrc" / source) for source in sources),
        "-o", str(binary),
    ]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 and "sanitize" in built.stderr:
        pytest.skip(f"{cxx} cannot build with sanitizers here: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-4000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    env.pop("LD_PRELOAD", None)
    ran = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=600)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    return ran.stdout
