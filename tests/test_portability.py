"""The CPU sources build for a non-x86 machine: the SIMD kernels compile to nothing there.

Compiles with an aarch64 cross compiler (Debian's g++-aarch64-linux-gnu, which .ci/run installs):
the torch-free sources (common/cpu_features.cpp and every <family>_cpu_simd.cpp) to objects,
which must then define each family's AVX2-table function but no AVX2 kernel, and the CPU kernel
files that use the tables (which include torch's headers) with -fsyntax-only. Skipped where no
cross compiler is installed.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CROSS = os.environ.get("PVO_CROSS_CXX", "aarch64-linux-gnu-g++")

pytestmark = pytest.mark.skipif(shutil.which(CROSS) is None, reason=f"no cross compiler {CROSS}")

TORCH_FREE = ["common/cpu_features.cpp", *sorted(str(p.relative_to(ROOT / "csrc")) for p in ROOT.glob("csrc/*/*_cpu_simd.cpp"))]
TABLE_USERS = sorted(str(p.relative_to(ROOT / "csrc")) for p in ROOT.glob("csrc/*/*_cpu.cpp"))


def _compile(arguments: list, strict: bool = False) -> subprocess.CompletedProcess:
    # Warnings are errors for our own torch-free files only (torch's headers are not ours).
    warnings = ["-Wall", "-Werror"] if strict else ["-Wall"]
    return subprocess.run([CROSS, "-std=c++20", *warnings, f"-I{ROOT / 'csrc'}", *arguments],
                          capture_output=True, text=True, timeout=600)


def test_torch_free_cpu_sources_compile_without_x86_kernels(tmp_path: Path) -> None:
    assert len(TORCH_FREE) >= 4, TORCH_FREE
    nm = CROSS.replace("g++", "nm")
    for source in TORCH_FREE:
        obj = tmp_path / (Path(source).stem + ".o")
        built = _compile(["-O2", "-c", str(ROOT / "csrc" / source), "-o", str(obj)], strict=True)
        assert built.returncode == 0, f"{source}:\n{built.stderr[-3000:]}"
        if shutil.which(nm) is None:
            continue
        symbols = subprocess.run([nm, "-C", str(obj)], capture_output=True, text=True).stdout
        # An x86 kernel that leaked out of the PVO_X86 guard would show up by name.
        assert "_avx2(" not in symbols.replace("_avx2_kernels", ""), f"{source} defines AVX2 code off x86"
        if source.endswith("_cpu_simd.cpp"):
            assert "avx2_kernels" in symbols, f"{source} must still define its (null) AVX2 table"


def test_cpu_kernel_files_parse_for_aarch64() -> None:
    torch_include = torch.utils.cpp_extension.include_paths()
    generated = ROOT / "build" / "generated"
    if not (generated / "pvo_build_info.h").exists():
        pytest.skip("build/generated/pvo_build_info.h is written by setup.py; build first")
    flags = ["-fsyntax-only", "-fopenmp", f"-I{generated}", f"-I{sysconfig.get_paths()['include']}",
             *(f"-I{path}" for path in torch_include)]

    def check(source: str) -> tuple:
        return source, _compile([*flags, str(ROOT / "csrc" / source)])

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for source, result in pool.map(check, TABLE_USERS):
            assert result.returncode == 0, f"{source}:\n{result.stderr[-3000:]}"
