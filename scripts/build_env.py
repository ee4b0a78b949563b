"""Where the CUDA toolkit and torch's CUDA wheels live: shared by setup.py and the CMake build
(`python scripts/build_env.py --cmake-args` prints the -D options `make cmake-check` passes)."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path


def locate_cuda_home() -> None:
    """Point CUDA_HOME at the toolkit when the user has not.

    torch guesses CUDA_HOME from the folder above `which nvcc`; a wrapper script in /usr/local/bin
    then makes it /usr/local, which holds no CUDA headers. Prefer a folder that has both nvcc and
    cuda_runtime.h: CUDA_HOME/CUDA_PATH if set, else /usr/local/cuda, else above nvcc's real path.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            os.environ["CUDA_HOME"] = home
            return


def nvidia_wheel_dirs() -> tuple[list[str], list[str]]:
    """Include and library folders of the CUDA runtime shipped inside torch's nvidia/* wheels.

    A CUDA build of torch from PyPI brings the CUDA headers ATen's CUDA headers include
    (cusparse.h, cublas_v2.h, ...) and the runtime libraries in site-packages/nvidia/<pkg>/;
    a minimal toolkit (nvcc only) lacks them. Found from the installed packages, never a fixed path.
    """
    includes: list[str] = []
    libs: list[str] = []
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return includes, libs
    for base in getattr(nvidia, "__path__", []):
        for folder in sorted(Path(base).iterdir()):
            if (folder / "include").is_dir():
                includes.append(str(folder / "include"))
            if (folder / "lib").is_dir():
                libs.append(str(folder / "lib"))
    return includes, libs


def cmake_args() -> list[str]:
    """-D options that let torch's CMake package configure here (CPU build of our library).

    A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit: point it at the
    real toolkit, give it an arch (no GPU to detect), and let it find the libraries the toolkit
    lacks (nvrtc, cublas, ...) in torch's nvidia/* wheels.
    """
    import torch
    import torch.utils

    args = [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if torch.version.cuda is None:
        return args
    locate_cuda_home()
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={home}", f"-DCUDAToolkit_ROOT={home}"]
    includes, libs = nvidia_wheel_dirs()
    if includes:
        args.append("-DCMAKE_INCLUDE_PATH=" + ";".join(includes))
    if libs:
        args.append("-DCMAKE_LIBRARY_PATH=" + ";".join(libs))
        nvrtc = sorted(path for folder in libs for path in glob.glob(os.path.join(folder, "libnvrtc.so*")))
        if nvrtc:
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


def configure(build_dir: str) -> int:
    """Runs CMake's configure step for this repository into `build_dir`."""
    import subprocess

    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # torch's CMake would otherwise probe for a GPU
    command = ["cmake", "-S", str(Path(__file__).resolve().parent.parent), "-B", build_dir, "-G", "Ninja",
               "-DCMAKE_BUILD_TYPE=Release", *cmake_args()]
    print(" ".join(command), flush=True)
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--configure":
        sys.exit(configure(sys.argv[2]))
    if sys.argv[1:] == ["--cmake-args"]:
        print("\n".join(cmake_args()))
        sys.exit(0)
    print("usage: build_env.py --configure BUILD_DIR | --cmake-args", file=sys.stderr)
    sys.exit(2)
