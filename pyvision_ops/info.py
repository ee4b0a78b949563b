"""``python -m pyvision_ops.info``: how the installed extension was built and what it sees."""

from __future__ import annotations

import platform

import torch

from pyvision_ops._extension import build_info, has_ops
from pyvision_ops._version import __version__

__all__ = ["main"]


def main() -> None:
    print(f"pyvision_ops {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), "
          f"threads {torch.get_num_threads()}")
    if not has_ops():
        from pyvision_ops._extension import BUILD_HINT, _load_error

        print(f"compiled extension: not built or not loadable ({_load_error!r})")
        print(f"to build it: {BUILD_HINT}")
        return
    info = build_info()
    print(f"compiled extension: built against torch {info['torch_build']}, OpenMP {info['openmp']}, "
          f"debug {info['debug']}")
    if info["with_cuda"]:
        print(f"CUDA kernels: yes (CUDA {info['cuda_version']}, archs {info['cuda_archs']})")
    else:
        print("CUDA kernels: no (CPU-only build)")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})")
    else:
        print("GPU: none visible")
    ops = sorted(
        name.split("::", 1)[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("pyvision_ops::")
    )
    print(f"operators: {', '.join(ops)}")


if __name__ == "__main__":
    main()
